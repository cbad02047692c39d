"""Benchmark: the fault suite's scenario, longer (more simulated days, more subjects).

Not a test (the CI variant is ``tests/faults/test_scenario.py``). It plays the same script
(``tests/faults/days.py``: SIGKILL mid sweep, mid reminder batch and mid delivery batch; SMTP
4xx/5xx; a receiver down, then 500, gzip, absurd ``Retry-After``, then healthy; database
connections terminated mid-batch; malformed input on every entry point), with ordinary days
between the fault days and the last day, on a database of its own (created on the server at
``--url``, dropped at the end), a temporary Prefect server (Prefect's test harness), a real
SMTP server and real webhook receivers on loopback. It prints the tally (faults injected,
survived, items lost), the seconds each day took and every broken promise; exit 1 if any.

    python bench/fault_soak.py                        # 20 days, 400 subjects
    python bench/fault_soak.py --days 60 --subjects 2000
    python bench/fault_soak.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def hermetic() -> Path:
    """A private Prefect home and key directory, as ``tests/conftest.py`` sets for the suite
    (before anything imports ``prefect``)."""
    home = Path(tempfile.mkdtemp(prefix="fault-soak-"))
    os.environ.update(
        PREFECT_HOME=str(home),
        CONSENTFLOW_DATA_DIR=str(home / "consentflow-data"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="WARNING",
        CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        CONSENTFLOW_WEBHOOK_TIMEOUT="10",
    )
    os.environ.pop("PREFECT_API_URL", None)
    sys.path.insert(0, str(ROOT))
    return home


def run(url: str, days: int, subjects: int, batch: int, home: Path) -> int:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from consentflow import db, settings
    from tests.faults import checks
    from tests.faults.days import play
    from tests.faults.scenario import Scenario, Size
    from tests.support.faults import GatedSmtp
    from tests.support.web import serve_process

    admin = create_engine(db.normalise_url(url), isolation_level="AUTOCOMMIT")
    name = f"fault_soak_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    target = make_url(db.normalise_url(url)).set(database=name)
    database = target.render_as_string(hide_password=False)
    smtp = GatedSmtp().start()
    os.environ.update(
        CONSENTFLOW_DATABASE_URL=database,
        CONSENTFLOW_SMTP_HOST="127.0.0.1",
        CONSENTFLOW_SMTP_PORT=str(smtp.port),
        CONSENTFLOW_SMTP_TIMEOUT="5",
        CONSENTFLOW_MAIL_FROM="Consent Desk <consent@example.org>",
        CONSENTFLOW_PUBLIC_URL="https://consent.example.org",
    )
    settings.get_settings.cache_clear()
    engine = db.make_engine(database)
    try:
        db.upgrade(engine)
        with prefect_test_harness(server_startup_timeout=120):
            os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
            size = Size(days=max(days, 6), subjects=subjects, batch=batch)
            sc = Scenario(engine, database, home / "logs", smtp, "", size)
            began = time.monotonic()
            try:
                with serve_process(database) as served:
                    sc.web = served.base
                    play(sc)
                failures, lost = checks.run_all(sc, served.stdout + served.stderr)
            finally:
                sc.close()
            print(sc.tally.line(not failures and lost == 0, lost))
            print(f"  {size.days} days, {size.subjects} subjects: {time.monotonic() - began:.0f} s")
            for failure in failures:
                print(f"  FAILED: {failure}")
            return 1 if failures or lost else 0
    finally:
        smtp.stop()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_url = os.environ.get("CONSENTFLOW_TEST_POSTGRES_URL", DEFAULT_URL)
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--subjects", type=int, default=400)
    parser.add_argument("--batch", type=int, default=25)
    args = parser.parse_args()
    home = hermetic()
    sys.exit(run(args.url, args.days, args.subjects, args.batch, home))


if __name__ == "__main__":
    main()

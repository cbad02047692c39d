"""The standing fault suite: one scripted scenario over several simulated days on PostgreSQL,
a real Prefect harness, a real SMTP server and real webhook receivers, while faults strike
(``days.py``: SIGKILL mid sweep, mid reminder batch and mid delivery batch; SMTP 4xx and 5xx;
a receiver down, then 500, gzip bodies, absurd ``Retry-After``, then healthy; database
connections terminated mid-batch; malformed input on every entry point). At the end every
promise in ``checks.py`` must hold and the tally says no item was lost.

PostgreSQL only, and required: without ``CONSENTFLOW_TEST_POSTGRES_URL`` the test fails (the
``pg_database`` fixture says so); it never skips. The longer variant is ``bench/fault_soak.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import checks
from tests.faults.days import play
from tests.faults.scenario import Scenario, Size
from tests.support.faults import GatedSmtp
from tests.support.smtp import use_smtp
from tests.support.web import serve_process

# pg_database first: without PostgreSQL the test fails at once, before Prefect starts
pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.usefixtures("pg_database", "prefect_harness", "allow_loopback"),
]


@pytest.fixture
def scenario(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scenario]:
    from prefect.settings import PREFECT_API_URL

    from tests.support.database import _reset_caches, _truncate_pg

    _truncate_pg(pg_database)
    monkeypatch.setenv("CONSENTFLOW_DATABASE_URL", pg_database)
    monkeypatch.setenv("CONSENTFLOW_WEBHOOK_TIMEOUT", "10")
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    smtp = GatedSmtp().start()
    use_smtp(monkeypatch, smtp.port)
    _reset_caches()
    from consentflow import db

    engine = db.get_engine(pg_database)
    sc = Scenario(engine, pg_database, tmp_path / "logs", smtp, "", Size())
    try:
        yield sc
    finally:
        sc.close()
        smtp.stop()
    engine.dispose()
    _reset_caches()


def test_the_scenario_survives_every_fault(scenario: Scenario) -> None:
    sc = scenario
    with serve_process(sc.url) as served:
        sc.web = served.base
        play(sc)
    failures, lost = checks.run_all(sc, served.stdout + served.stderr)
    print(sc.tally.line(not failures and lost == 0, lost))
    assert not failures and lost == 0, "\n".join(failures)

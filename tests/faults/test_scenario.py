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
from typing import Any

import pytest

from tests.faults import checks
from tests.faults.days import play
from tests.faults.scenario import Scenario, Size
from tests.support.faults import GatedSmtp
from tests.support.smtp import use_smtp
from tests.support.web import serve_process

pytestmark = pytest.mark.usefixtures("prefect_harness", "allow_loopback")


def run_in_process(flow: str, **parameters: Any) -> Any:
    """Run ``flow`` here (under the Prefect harness): its final state, never raising."""
    from consentflow import runs

    fn, values = runs.prepare_flow(flow, parameters)
    return fn(**values, return_state=True)


def prefect_texts() -> dict[str, str]:
    """Every log line and artifact the Prefect server holds."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [f"{log.name} {log.message}" for log in batch]
            offset += len(batch)
        artifacts = [f"{a.key} {a.data} {a.description}" for a in client.read_artifacts()]
    return {"Prefect logs": "\n".join(logs), "Prefect artifacts": "\n".join(artifacts)}


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
    sc.run_flow = run_in_process
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
    failures: list[str] = []
    reached, lost = checks.withdrawals_reached(sc)
    failures += reached
    failures += checks.no_consent_changed_twice(sc)
    failures += checks.no_email_twice(sc)
    failures += checks.duplicates_bounded(sc)
    failures += checks.audit_accounts(sc)
    texts = {f"flow process {p.out_path.name}": p.wait(60).out + p.wait(60).err for p in sc.runs}
    texts |= prefect_texts()
    texts["web server output"] = served.stdout + served.stderr
    failures += checks.leaks(sc, texts)
    print(sc.tally.line(lost))
    assert not failures and lost == 0, "\n".join(failures)

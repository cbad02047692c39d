"""The propagate flow under a Prefect test harness, directly and through ``consentflow run``."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import select

from consentflow import db
from consentflow.models import AuditEntry, Delivery, utcnow
from tests.support.webhooks import ledger, revoke, verify

pytestmark = pytest.mark.usefixtures("allow_loopback")


def run_logs(run_id: str) -> list[str]:
    """The messages of a flow run's logs, as the Prefect server holds them (the UI shows these)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in the background: send what is queued
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return [log.message for log in logs]


def test_propagate_flow_delivers_and_writes_its_audit_entry(prefect_harness, engine, receiver):
    from flows.propagate import Params, propagate

    secrets = ledger(engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=2)
    receiver.set("/ads", status=503)
    revoke(engine, 2)
    summary = propagate(Params(max_seconds=None))
    assert summary.outcome == "completed" and summary.run_id
    # the counts are not per purpose: "-"; the endpoints are in their own rows
    assert dict(summary.counts) == {("-", "delivered"): 2, ("-", "retried"): 2}
    zero = {"dead_lettered": 0, "disabled_410": 0, "held": 0, "lease_lost": 0, "due": 0}
    assert summary.endpoints == [
        {"endpoint": "ads", "delivered": 0, "retried": 2, **zero},
        {"endpoint": "crm", "delivered": 2, "retried": 0, **zero},
    ]
    for req in receiver.at("/crm"):
        verify(req, secrets["crm"])
    with db.session_scope(engine) as s:
        [entry] = s.exec(select(AuditEntry).where(AuditEntry.action == "flow.run")).all()
        assert entry.run_id == summary.run_id
        assert entry.detail["totals"] == {"delivered": 2, "retried": 2}
        assert {r["purpose"] for r in entry.detail["counts"]} == {"-"}
        assert [e["endpoint"] for e in entry.detail["endpoints"]] == ["ads", "crm"]
        assert len(s.exec(select(Delivery).where(Delivery.state == "delivered")).all()) == 2

    # every attempt is in the run's own logs (failures as warnings); no secret, no person
    logs = run_logs(summary.run_id)
    failed = [m for m in logs if m.startswith("webhook msg_") and " to ads, " in m]
    assert len(failed) == 2 and all("attempt 1: HTTP 503" in m for m in failed)
    text = "\n".join(logs)
    for secret in secrets.values():
        assert secret.removeprefix("whsec_") not in text
    assert "subject-" not in text


def test_as_of_is_for_dry_runs_only():
    from flows.propagate import Params

    later = utcnow() + timedelta(hours=6)
    with pytest.raises(ValidationError, match="as_of is allowed only with dry_run"):
        Params(as_of=later)
    assert Params(as_of=later.replace(tzinfo=None), dry_run=True).as_of == later


def test_consentflow_run_propagate(prefect_harness, cli, receiver):
    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    r = cli("system", "add", "crm", "--purposes", "news", "--webhook-url", receiver.url("/h"))
    assert r.code == 0, r.err
    for cmd in (("subject", "add", "alice"), ("consent", "grant", "alice", "news")):
        assert cli(*cmd).code == 0
    assert cli("consent", "revoke", "alice", "news").code == 0
    dry = json.loads(cli("run", "propagate", "--dry-run", "--json").out)
    assert dry["dry_run"] and dry["totals"] == {"due": 1} and receiver.requests == []
    assert dry["counts"] == [{"purpose": "-", "outcome": "due", "count": 1}]
    assert dry["endpoints"][0]["endpoint"] == "crm" and dry["endpoints"][0]["due"] == 1
    # a real run refuses as_of (it would send scheduled retries early) before it starts
    later = (utcnow() + timedelta(days=1)).isoformat()
    refused = cli("run", "propagate", "--as-of", later)
    assert refused.code == 2 and "only with dry_run" in refused.err
    ahead = json.loads(cli("run", "propagate", "--dry-run", "--as-of", later, "--json").out)
    assert ahead["totals"] == {"due": 1} and receiver.requests == []
    r = cli("run", "propagate", "--json", "--param", "max_seconds=30")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["totals"] == {"delivered": 1}
    assert out["endpoints"][0]["endpoint"] == "crm" and out["endpoints"][0]["delivered"] == 1
    assert len(receiver.at("/h")) == 1
    text = cli("run", "propagate").out
    assert "nothing to do" in text

"""The propagate flow under a Prefect test harness, directly and through ``consentflow run``."""

from __future__ import annotations

import json

import support_webhooks
from sqlmodel import select
from support_webhooks import ledger, revoke, verify

from consentflow import db
from consentflow.models import AuditEntry, Delivery

allow_loopback = support_webhooks.allow_loopback
receiver = support_webhooks.receiver


def test_propagate_flow_delivers_and_writes_its_audit_entry(prefect_harness, engine, receiver):
    from flows.propagate import Params, propagate

    secrets = ledger(engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=2)
    receiver.set("/ads", status=503)
    revoke(engine, 2)
    summary = propagate(Params(max_seconds=None))
    assert summary.outcome == "completed" and summary.run_id
    assert dict(summary.counts) == {("crm", "delivered"): 2, ("ads", "retried"): 2}
    for req in receiver.at("/crm"):
        verify(req, secrets["crm"])
    with db.session_scope(engine) as s:
        [entry] = s.exec(select(AuditEntry).where(AuditEntry.action == "flow.run")).all()
        assert entry.run_id == summary.run_id
        assert entry.detail["totals"] == {"delivered": 2, "retried": 2}
        assert len(s.exec(select(Delivery).where(Delivery.state == "delivered")).all()) == 2


def test_consentflow_run_propagate(prefect_harness, cli, receiver):
    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    r = cli("system", "add", "crm", "--purposes", "news", "--webhook-url", receiver.url("/h"))
    assert r.code == 0, r.err
    for cmd in (("subject", "add", "alice"), ("consent", "grant", "alice", "news")):
        assert cli(*cmd).code == 0
    assert cli("consent", "revoke", "alice", "news").code == 0
    dry = json.loads(cli("run", "propagate", "--dry-run", "--json").out)
    assert dry["dry_run"] and dry["totals"] == {"due": 1} and receiver.requests == []
    r = cli("run", "propagate", "--json", "--param", "max_seconds=30")
    assert r.code == 0, r.err
    assert json.loads(r.out)["totals"] == {"delivered": 1}
    assert len(receiver.at("/h")) == 1

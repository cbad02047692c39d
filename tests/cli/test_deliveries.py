"""The operator commands for deliveries and endpoints (the wake-up each re-queue causes is tested
in tests/delivery/test_wakeup.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from consentflow.delivery import engine as eng
from consentflow.models import utcnow
from tests.support.webhooks import verify

pytestmark = pytest.mark.usefixtures("allow_loopback")


def setup(cli, receiver, path="/hook") -> str:
    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    r = cli(
        "system", "add", "crm", "--purposes", "news", "--webhook-url", receiver.url(path), "--json"
    )
    assert r.code == 0, r.err
    secret = json.loads(r.out)["webhook_secret"]
    for who in ("alice", "bob"):
        assert cli("subject", "add", who).code == 0
        assert cli("consent", "grant", who, "news").code == 0
    return secret


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest",
        "https://100.64.0.1/hook",
        "https://[fd00::1]/hook",
        "http://127.0.0.2:8000/hook",
        "http://hooks.example.com/hook",
    ],
)
def test_registration_refuses_forbidden_urls(cli, url):
    cli("purpose", "add", "news", "--title", "News", "--validity-days", "30")
    r = cli("system", "add", "crm", "--purposes", "news", "--webhook-url", url)
    assert r.code == 2
    assert r.err.count("\n") == 1 and r.err.startswith("consentflow: ")
    assert "Traceback" not in r.err
    assert cli("system", "list", "--json").out.strip() == "[]"


def test_deliveries_list_show_replay_health_feed(cli, receiver, engine):
    secret = setup(cli, receiver)
    receiver.set("/hook", status=500)
    assert cli("consent", "revoke", "alice", "news").code == 0
    assert cli("consent", "revoke", "bob", "news").code == 0
    eng.deliver_due(engine, options=eng.Options(timeout=5))

    rows = json.loads(cli("deliveries", "list", "--json").out)
    assert len(rows) == 2 and {r["state"] for r in rows} == {"pending"}
    assert all(r["attempts"] == 1 and r["last_status"] == 500 for r in rows)
    assert "crm" in cli("deliveries", "list", "--state", "pending", "--system", "crm").out
    assert cli("deliveries", "list", "--state", "bogus").code == 2

    shown = json.loads(cli("deliveries", "show", str(rows[0]["id"]), "--json").out)
    assert shown["attempt_log"][0]["status_code"] == 500

    health = json.loads(cli("deliveries", "health", "--json").out)
    assert health[0]["system"] == "crm" and health[0]["pending"] == 2
    assert health[0]["failures_24h"] == 2 and health[0]["oldest_undelivered_age_s"] is not None

    receiver.set("/hook", status=200)
    r = cli("deliveries", "replay", str(rows[0]["id"]))
    assert r.code == 0 and "queued again" in r.out
    eng.deliver_due(engine, options=eng.Options(timeout=5))
    states = {d["id"]: d["state"] for d in json.loads(cli("deliveries", "list", "--json").out)}
    assert states[rows[0]["id"]] == "delivered" and states[rows[1]["id"]] == "pending"
    for req in receiver.at("/hook"):
        verify(req, secret)

    since = (utcnow() - timedelta(hours=1)).isoformat()
    r = cli("deliveries", "redeliver", "--since", since, "--system", "crm", "--json")
    assert json.loads(r.out)["queued"] == 1
    assert cli("deliveries", "redeliver", "--since", "yesterday").code == 2
    assert cli("deliveries", "replay", "99999").code == 2

    lines = cli("deliveries", "feed", "crm", "--limit", "10").out.splitlines()
    items = [json.loads(x) for x in lines]
    assert [i["data"]["subject"] for i in items] == ["alice", "bob"]
    after = cli("deliveries", "feed", "crm", "--cursor", str(items[0]["cursor"])).out.splitlines()
    assert [json.loads(x)["data"]["subject"] for x in after] == ["bob"]
    assert cli("deliveries", "feed", "nope").code == 2


def test_when_did_each_system_learn_of_alices_withdrawal(cli, receiver, engine):
    setup(cli, receiver)
    r = cli("system", "add", "ads", "--purposes", "news", "--webhook-url", receiver.url("/ads"))
    assert r.code == 0, r.err
    receiver.set("/ads", status=503)
    assert cli("consent", "revoke", "alice", "news").code == 0
    assert cli("consent", "revoke", "bob", "news").code == 0
    eng.deliver_due(engine, options=eng.Options(timeout=5))

    rows = json.loads(cli("deliveries", "list", "--subject", "alice", "--json").out)
    assert sorted(r["system"] for r in rows) == ["ads", "crm"]
    assert {r["purpose"] for r in rows} == {"news"} and len({r["event_id"] for r in rows}) == 1
    by_system = {r["system"]: r for r in rows}
    assert by_system["crm"]["state"] == "delivered" and by_system["crm"]["attempts"] == 1
    assert by_system["crm"]["delivered_at"] is not None
    assert by_system["ads"]["delivered_at"] is None and by_system["ads"]["attempts"] == 1
    assert by_system["ads"]["last_status"] == 503
    [crm_req] = [r for r in receiver.at("/hook") if b'"subject":"alice"' in r.body]
    assert crm_req.headers["webhook-id"] == by_system["crm"]["webhook_id"]

    # the same rows by event id; combined with --system; text shows delivered at and tries
    event_id = rows[0]["event_id"]
    assert json.loads(cli("deliveries", "list", "--event", event_id, "--json").out) == rows
    only = json.loads(
        cli("deliveries", "list", "--event", event_id, "--system", "crm", "--json").out
    )
    assert [r["system"] for r in only] == ["crm"]
    text = cli("deliveries", "list", "--subject", "alice").out
    assert "delivered at" in text and "tries" in text
    assert by_system["crm"]["delivered_at"][:10] in text
    assert "bob" not in text and len(text.strip().splitlines()) == 3  # header and two rows

    assert len(json.loads(cli("deliveries", "list", "--subject", "bob", "--json").out)) == 2
    assert cli("deliveries", "list", "--subject", "nobody").code == 2
    bad = cli("deliveries", "list", "--event", "not-a-uuid")
    assert bad.code == 2 and "UUID" in bad.err
    none = "00000000-0000-0000-0000-000000000000"
    assert json.loads(cli("deliveries", "list", "--event", none, "--json").out) == []


def test_system_pause_resume_disable_enable_rotate(cli, receiver, engine):
    old = setup(cli, receiver)
    r = cli("system", "pause", "crm", "--reason", "CRM migration")
    assert r.code == 0 and "paused" in r.out
    assert cli("system", "pause", "crm").code == 1  # already paused: refused, one line
    assert cli("consent", "revoke", "alice", "news").code == 0
    eng.deliver_due(engine, options=eng.Options(timeout=5))
    assert receiver.requests == []
    held = json.loads(cli("deliveries", "list", "--state", "held", "--json").out)
    assert len(held) == 1
    assert json.loads(cli("deliveries", "health", "--json").out)[0]["held"] == 1
    r = cli("system", "resume", "crm", "--json")
    assert json.loads(r.out) == {"name": "crm", "status": "active", "reason": None, "pending": 1}
    assert cli("system", "disable", "crm").code == 0
    assert cli("system", "resume", "crm").code == 1  # disabled: needs enable
    assert cli("system", "enable", "crm").code == 0
    assert cli("system", "pause", "nope").code == 2

    r = cli("system", "rotate-secret", "crm", "--grace-hours", "2", "--json")
    new = json.loads(r.out)["webhook_secret"]
    assert new.startswith("whsec_") and new != old
    assert new not in cli("system", "list", "--json").out
    eng.deliver_due(engine, options=eng.Options(timeout=5))
    [req] = receiver.at("/hook")
    assert len(req.headers["webhook-signature"].split()) == 2
    verify(req, new)
    verify(req, old)

"""The JSON API through the ASGI app (both databases), and over a real uvicorn server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from consentflow import db, lifecycle
from consentflow.lifecycle import Actor
from consentflow.models import ApiToken, AuditEntry, ConsentEvent, Delivery, DeliveryState
from tests.support.web import bearer, client, seed, uvicorn_server


@pytest.fixture
def api(engine):
    toks = seed(engine)
    with client() as c:
        yield c, toks


def test_health_needs_no_token(api):
    c, _ = api
    r = c.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}


def test_openapi_schema_is_served_with_bearer_security(api):
    c, _ = api
    schema = c.get("/openapi.json").json()
    assert "/api/v1/check" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Every error answer is documented with the same body.
    responses = schema["paths"]["/api/v1/check"]["get"]["responses"]
    assert {"401", "403", "422"} <= set(responses)


def test_grant_and_revoke_record_channel_and_actor(api, engine):
    c, t = api
    r = c.post(
        "/api/v1/subjects/alice/consents/news/grant",
        headers=bearer(t.admin),
        json={"channel": "support", "actor_type": "agent", "actor": "Dana (call centre)"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "given" and body["previous_state"] is None and body["seq"] == 1
    r = c.post("/api/v1/subjects/alice/consents/news/revoke", headers=bearer(t.admin))
    assert r.status_code == 200 and r.json()["deliveries"] == 1  # crm subscribes to news
    with db.session_scope(engine) as s:
        events = s.exec(select(ConsentEvent).order_by(ConsentEvent.seq)).all()
        assert [(e.action, e.channel, e.actor_type, e.actor) for e in events] == [
            ("grant", "support", "agent", "Dana (call centre) via api:root"),
            ("revoke", "api", "subject", "api:root"),
        ]


def _audit(engine, action):
    with db.session_scope(engine) as s:
        return s.exec(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        ).all()


def test_every_api_change_names_its_token_in_the_event_and_the_audit_trail(api, engine):
    """An admin token cannot pass itself off as the person: the token is on the record."""
    c, t = api
    r = c.post(
        "/api/v1/subjects/alice/consents/news/grant",
        headers=bearer(t.admin),
        json={"channel": "api", "actor_type": "subject"},
    )
    assert r.status_code == 200, r.text
    r = c.post(
        "/api/v1/subjects/alice/consents/news/revoke",
        headers=bearer(t.support),
        json={"reason": "asked by phone, ticket 7"},
    )
    assert r.status_code == 200, r.text
    with db.session_scope(engine) as s:
        events = s.exec(select(ConsentEvent).order_by(ConsentEvent.seq)).all()
    assert [(e.actor_type, e.actor, e.channel, e.evidence) for e in events] == [
        ("subject", "api:root", "api", {"via_token": "root"}),
        ("agent", "sam", "support", {"via_token": "sam"}),
    ]
    # The hash-chained audit entries carry the token too (their actor).
    grant, revoke = _audit(engine, "consent.grant") + _audit(engine, "consent.revoke")
    assert (grant.actor, grant.channel) == ("api:root", "api")
    assert (revoke.actor, revoke.channel) == ("sam", "support")
    history = c.get("/api/v1/subjects/alice/history", headers=bearer(t.compliance)).json()
    assert [e["actor"] for e in history["events"]] == ["api:root", "sam"]


@pytest.mark.parametrize("channel", ["email_link", "web"])
def test_page_channels_are_refused_through_the_api(api, engine, channel):
    """Only the signed-link and preference pages record a person's own click."""
    c, t = api
    for token in (t.admin, t.support):
        r = c.post(
            "/api/v1/subjects/alice/consents/news/grant",
            headers=bearer(token),
            json={"channel": channel, "actor_type": "subject", "reason": "r"},
        )
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail == (
            f"body channel: '{channel}' is recorded only by the signed-link and preference "
            "pages; use 'api' or 'support'"
        )
        assert r.json()["errors"][0]["field"] == "channel"
    with db.session_scope(engine) as s:
        assert s.exec(select(ConsentEvent)).all() == []


def test_422_messages_show_plain_values_not_enum_reprs(api):
    c, t = api
    h = bearer(t.admin)
    r = c.post("/api/v1/subjects/alice/consents/news/grant", headers=h, json={"channel": "fax"})
    assert r.status_code == 422
    assert r.json()["detail"] == "body channel: Input should be 'api' or 'support'"
    r = c.post(
        "/api/v1/subjects/alice/consents/news/grant", headers=h, json={"actor_type": "system"}
    )
    assert r.json()["detail"] == "body actor_type: Input should be 'subject' or 'agent'"
    schema = c.get("/openapi.json").json()["components"]["schemas"]["ChangeIn"]["properties"]
    assert schema["channel"]["enum"] == ["api", "support"]
    # The ledger records ``ACTOR via api:TOKEN`` in 200 characters: a longer name is refused.
    r = c.post("/api/v1/subjects/alice/consents/news/grant", headers=h, json={"actor": "x" * 91})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "actor"


def test_support_acts_as_named_agent_and_must_give_a_reason(api, engine):
    c, t = api
    r = c.post("/api/v1/subjects/alice/consents/news/grant", headers=bearer(t.support))
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = c.post(
        "/api/v1/subjects/alice/consents/news/grant",
        headers=bearer(t.support),
        json={
            "reason": "asked by phone, ticket 42",
            "actor_type": "subject",
            "channel": "api",
            "actor": "alice",
        },
    )
    assert r.status_code == 200, r.text
    with db.session_scope(engine) as s:
        e = s.exec(select(ConsentEvent)).one()
        # Whatever the body says, a support token is recorded as itself.
        assert (e.actor_type, e.actor, e.channel, e.reason, e.evidence) == (
            "agent",
            "sam",
            "support",
            "asked by phone, ticket 42",
            {"via_token": "sam"},
        )


def test_lifecycle_refusal_is_409_and_unknowns_are_404(api):
    c, t = api
    h = bearer(t.admin)
    r = c.post("/api/v1/subjects/alice/consents/news/revoke", headers=h)
    assert r.status_code == 409 and "nothing to withdraw" in r.json()["detail"]
    r = c.post("/api/v1/subjects/nobody/consents/news/grant", headers=h)
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    r = c.post("/api/v1/subjects/alice/consents/nothing/grant", headers=h)
    assert r.status_code == 404 and "nothing" in r.json()["detail"]
    r = c.post("/api/v1/subjects", headers=h, json={"external_id": "alice"})
    assert r.status_code == 409


def test_bad_input_is_422_naming_the_field(api):
    c, t = api
    h = bearer(t.admin)
    r = c.get("/api/v1/check?purpose=news", headers=h)
    assert r.status_code == 422
    assert r.json()["detail"] == "query subject: Field required"
    assert r.json()["errors"][0]["field"] == "subject"
    r = c.post("/api/v1/subjects/alice/consents/news/grant", headers=h, json={"channel": "fax"})
    assert r.status_code == 422 and "channel" in r.json()["detail"]
    r = c.get("/api/v1/subjects/alice/consents?at=yesterday", headers=h)
    assert r.status_code == 422 and "at" in r.json()["detail"]
    r = c.post("/api/v1/subjects", headers=h, json={"external_id": "x", "email": "not-an-email"})
    assert r.status_code == 422 and "email" in r.json()["detail"]
    r = c.post("/api/v1/subjects", headers=h, json={"external_id": "x\x00y"})
    assert r.status_code == 422 and "external_id" in r.json()["detail"]
    r = c.get(f"/api/v1/feed?system=crm&cursor={2**64}", headers=h)
    assert r.status_code == 422 and "cursor" in r.json()["detail"]


def test_check_explains_itself_and_is_an_index_lookup(api, engine):
    c, t = api
    h = bearer(t.admin)
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=h)
    r = c.get(
        "/api/v1/check", params={"subject": "alice", "purpose": "news", "system": "crm"}, headers=h
    )
    d = r.json()
    assert r.status_code == 200
    assert d["allowed"] is True and d["reason"] == "given" and d["valid_until"]
    assert d["event_id"] and d["state"] == "given" and d["purpose_version"] == 1
    r = c.get(
        "/api/v1/check",
        params={"subject": "alice", "purpose": "invoices", "system": "crm"},
        headers=h,
    )
    assert r.json()["allowed"] is False and r.json()["reason"] == "system_not_authorised"
    r = c.get("/api/v1/check", params={"subject": "zed", "purpose": "news"}, headers=h)
    assert r.json()["reason"] == "unknown_subject"
    r = c.get("/api/v1/check", params={"subject": "a", "purpose": "news", "system": "x"}, headers=h)
    assert r.status_code == 404

    # The answer comes from the current-state table: no consent_event row is read.
    from sqlalchemy import event

    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        r = c.get(
            "/api/v1/check",
            params={"subject": "alice", "purpose": "news"},
            headers=bearer(t.system),
        )
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert r.json()["allowed"] is True and r.json()["system"] == "crm"
    assert statements and not any("consent_event" in s for s in statements)


def test_system_token_only_checks_and_reads_feed_for_itself(api):
    c, t = api
    h_admin, h_crm = bearer(t.admin), bearer(t.system)
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=h_admin)
    c.post("/api/v1/subjects/alice/consents/invoices/grant", headers=h_admin)
    # crm may ask about news, for itself; asking as billing is refused.
    assert c.get("/api/v1/check?subject=alice&purpose=news", headers=h_crm).json()["allowed"]
    r = c.get("/api/v1/check?subject=alice&purpose=news&system=billing", headers=h_crm)
    assert r.status_code == 403
    # invoices is not crm's purpose: the answer is no, with the reason.
    r = c.get("/api/v1/check?subject=alice&purpose=invoices", headers=h_crm)
    assert r.json()["allowed"] is False and r.json()["reason"] == "system_not_authorised"
    # Feed: only crm's purposes.
    c.post("/api/v1/subjects/alice/consents/news/revoke", headers=h_admin)
    c.post("/api/v1/subjects/alice/consents/invoices/revoke", headers=h_admin)
    feed = c.get("/api/v1/feed", headers=h_crm).json()
    assert feed["system"] == "crm"
    assert [i["data"]["purpose"] for i in feed["items"]] == ["news"]
    assert feed["items"][0]["type"] == "consent.withdrawn"
    again = c.get(f"/api/v1/feed?cursor={feed['next_cursor']}", headers=h_crm).json()
    assert again["items"] == [] and again["next_cursor"] == feed["next_cursor"]
    assert c.get("/api/v1/feed?system=billing", headers=h_crm).status_code == 403
    # Everything else is off limits to a system token.
    assert c.get("/api/v1/subjects/alice", headers=h_crm).status_code == 403
    # An admin must say which system's feed it reads.
    r = c.get("/api/v1/feed", headers=h_admin)
    assert r.status_code == 422 and "system" in r.json()["detail"]


def test_subject_history_as_of_and_requests(api, engine):
    c, t = api
    h = bearer(t.admin)
    c.post("/api/v1/subjects/bob/consents/news/request", headers=h)
    c.post("/api/v1/subjects/bob/consents/news/grant", headers=h)
    with db.session_scope(engine) as s:
        granted_at = s.exec(select(ConsentEvent.recorded_at).where(ConsentEvent.seq == 2)).one()
    c.post("/api/v1/subjects/bob/consents/news/revoke", headers=h)
    subject = c.get("/api/v1/subjects/bob", headers=h).json()
    assert subject["has_email"] is False and subject["consents"][0]["state"] == "withdrawn"
    history = c.get("/api/v1/subjects/bob/history", headers=h).json()["events"]
    assert [e["action"] for e in history] == ["request", "grant", "revoke"]
    at = (granted_at + timedelta(microseconds=1)).isoformat()
    then = c.get("/api/v1/subjects/bob/consents", params={"at": at}, headers=h).json()
    assert then["consents"][0]["state"] == "given"
    # A time without a zone is UTC.
    naive = (granted_at + timedelta(microseconds=1)).replace(tzinfo=None).isoformat()
    assert (
        c.get(f"/api/v1/subjects/bob/consents?at={naive}", headers=h).json()["consents"][0]["state"]
        == "given"
    )
    reqs = c.get("/api/v1/requests", headers=h).json()
    assert [(r["subject"], r["kind"], r["status"]) for r in reqs["items"]] == [
        ("bob", "collection", "answered")
    ]
    assert c.get("/api/v1/requests?status=open", headers=h).json()["items"] == []
    page = c.get("/api/v1/requests?limit=1&after=0", headers=h).json()
    assert page["next"] is None


def test_purposes_and_versions(api):
    c, t = api
    h = bearer(t.admin)
    r = c.post(
        "/api/v1/purposes",
        headers=h,
        json={"key": "sms", "title": "Texts", "validity_days": 90, "data_categories": ["phone"]},
    )
    assert r.status_code == 201 and r.json()["current_version"] == 1
    r = c.post(
        "/api/v1/purposes/sms/versions",
        headers=h,
        json={"material": True, "title": "Text messages"},
    )
    assert r.status_code == 201
    detail = r.json()
    assert detail["current_version"] == 2 and detail["material_version"] == 2
    assert [v["title"] for v in detail["versions"]] == ["Texts", "Text messages"]
    with db.session_scope(readonly=True) as s:
        revised = s.exec(select(AuditEntry).where(AuditEntry.action == "purpose.revised")).one()
        assert (revised.actor_type, revised.actor) == ("agent", "api:root")
    listed = {p["key"]: p for p in c.get("/api/v1/purposes", headers=bearer(t.support)).json()}
    assert listed["news"]["systems"] == ["crm"] and set(listed) == {"news", "invoices", "sms"}
    r = c.post("/api/v1/purposes/sms/versions", headers=h, json={"material": False})
    assert r.status_code == 422 and "nothing to revise" in r.json()["detail"]
    assert c.post("/api/v1/purposes", headers=bearer(t.compliance), json={}).status_code == 403


def test_receipt_has_the_27560_shape(api):
    c, t = api
    h = bearer(t.admin)
    r = c.post("/api/v1/subjects/alice/consents/news/grant", headers=h, json={"channel": "support"})
    assert r.status_code == 200, r.text
    c.post("/api/v1/subjects/alice/consents/news/revoke", headers=h)
    r = c.get("/api/v1/subjects/alice/receipt", headers=bearer(t.compliance))
    assert r.status_code == 200
    rec = r.json()
    # The DPV guide's receipt wrapping the record (tests/ledger/test_receipt.py validates it).
    for key in ("@context", "schema_version", "receipt_id", "pii_principal_id", "consent_record"):
        assert key in rec
    assert rec["schema_version"] == "https://w3id.org/dpv/schema/dpv-27560#receipt"
    record = rec["consent_record"]
    assert "record_id" in record and record["pii_principal_id"] == "alice"
    (block,) = record["processing"]
    assert block["purposes"][0]["purpose"] == "news"
    assert block["privacy_notice"]["notice_id"] == "news:v1"
    assert [p["party_id"] for p in block["recipient_third_parties"]] == ["crm"]
    assert block["state"] == "withdrawn" and block["consent_status"] == "dpv:ConsentWithdrawn"
    assert [
        (e["action"], e["event_state"], e["expression_method"], e["validity_duration"]["@type"])
        for e in block["events"]
    ] == [
        ("grant", "dpv:ConsentGiven", "support", "dpv:TemporalDuration"),
        ("revoke", "dpv:ConsentWithdrawn", "api", "dpv:UntilEventDuration"),
    ]
    assert block["events"][0]["validity_duration"]["value"] == "P365D"
    assert all(e["event_by"] == "data-subject" for e in block["events"])
    assert all(e["entity_id"] == "alice" for e in block["events"])
    # Stable record id, fresh receipt id.
    again = c.get("/api/v1/subjects/alice/receipt", headers=h).json()
    assert again["consent_record"]["record_id"] == record["record_id"]
    assert again["receipt_id"] != rec["receipt_id"]


def test_deliveries_health_and_replay(api, engine):
    c, t = api
    h = bearer(t.admin)
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=h)
    c.post("/api/v1/subjects/alice/consents/news/revoke", headers=h)
    listed = c.get("/api/v1/deliveries", headers=bearer(t.compliance)).json()["items"]
    assert len(listed) == 1 and listed[0]["state"] == "pending" and listed[0]["system"] == "crm"
    delivery_id, webhook_id = listed[0]["id"], listed[0]["webhook_id"]
    with db.session_scope(engine) as s:
        d = s.get(Delivery, delivery_id)
        d.state, d.attempts = DeliveryState.DEAD.value, 9
        s.add(d)
    health = {h_["system"]: h_ for h_ in c.get("/api/v1/deliveries/health", headers=h).json()}
    assert health["crm"]["dead"] == 1 and health["crm"]["pending"] == 0
    assert health["crm"]["ok"] is False and "billing" not in health  # billing has no webhook
    # Support may look at people, not replay; compliance replays (as from the workspace).
    path = f"/api/v1/deliveries/{delivery_id}/replay"
    assert c.post(path, headers=bearer(t.support)).status_code == 403
    r = c.post("/api/v1/systems/crm/replay", headers=bearer(t.compliance))
    assert r.json() == {"replayed": 1, "ids": [delivery_id]}
    detail = c.get(f"/api/v1/deliveries/{delivery_id}", headers=h).json()
    assert detail["state"] == "pending" and detail["webhook_id"] == webhook_id
    assert json.loads(detail["payload"])["type"] == "consent.withdrawn"
    assert c.post("/api/v1/deliveries/999/replay", headers=h).status_code == 404
    assert c.get("/api/v1/deliveries/999", headers=h).status_code == 404


def test_pausing_and_resuming_a_system(api, engine):
    """Compliance pauses and resumes an endpoint through the API as the CLI and the workspace
    do: its deliveries are held, then due again; each change audited under the token."""
    c, t = api
    h = bearer(t.compliance)
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=bearer(t.admin))
    c.post("/api/v1/subjects/alice/consents/news/revoke", headers=bearer(t.admin))
    r = c.post("/api/v1/systems/crm/pause", headers=h, json={"reason": "CRM maintenance"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "crm",
        "status": "paused",
        "reason": "CRM maintenance",
        "pending": 1,
    }
    again = c.post("/api/v1/systems/crm/pause", headers=h)
    assert again.status_code == 409 and "paused already" in again.json()["detail"]
    assert c.post("/api/v1/systems/crm/resume", headers=bearer(t.support)).status_code == 403
    assert c.post("/api/v1/systems/nope/resume", headers=h).status_code == 404
    assert c.post("/api/v1/systems/crm/explode", headers=h).status_code == 422
    r = c.post("/api/v1/systems/crm/resume", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "active"
    with db.session_scope(engine) as s:
        entries = s.exec(
            select(AuditEntry)
            .where(col(AuditEntry.action).in_(["system.paused", "system.resumed"]))
            .order_by(col(AuditEntry.seq))  # without it PostgreSQL may return any order
        ).all()
        assert [(e.action, e.actor) for e in entries] == [
            ("system.paused", "carol"),
            ("system.resumed", "carol"),
        ]


def test_audit_verify_and_export(api):
    c, t = api
    h = bearer(t.compliance)
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=bearer(t.admin))
    v = c.get("/api/v1/audit/verify", headers=h).json()
    assert v["ok"] is True and v["entries"] > 0
    anchored = c.get("/api/v1/audit/verify", params={"expect": v["head"]}, headers=h).json()
    assert anchored["ok"] is True
    r = c.get("/api/v1/audit/export", params={"subject": "alice"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["action"] for e in lines] == ["subject.created", "consent.grant"]
    assert all("hash" in e and "prev_hash" in e for e in lines)
    assert c.get("/api/v1/audit/export?subject=nobody", headers=h).status_code == 404
    r = c.get("/api/v1/audit/verify?expect=nonsense", headers=h)
    assert r.status_code == 422 and "expect" in r.json()["detail"]


def test_tokens_are_stored_hashed_and_revocation_is_immediate(api, engine):
    c, t = api
    with db.session_scope(engine) as s:
        stored = s.exec(select(ApiToken.token_hash)).all()
    assert t.admin not in stored and all(len(h) == 64 for h in stored)
    from consentflow import tokens

    with db.session_scope(engine) as s:
        tokens.revoke(s, "carol")
    r = c.get("/api/v1/me", headers=bearer(t.compliance))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_over_real_http(engine):
    """A downstream system asks "may I?" over real HTTP and gets an explained answer."""
    t = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with uvicorn_server() as base, httpx.Client(base_url=base, timeout=10) as http:
        r = http.get("/api/v1/check?subject=alice&purpose=news", headers=bearer(t.system))
        assert r.status_code == 200
        assert r.json()["allowed"] is True and r.json()["reason"] == "given"
        r = http.post("/api/v1/subjects/alice/consents/news/revoke", headers=bearer(t.admin))
        assert r.status_code == 200
        r = http.get("/api/v1/check?subject=alice&purpose=news", headers=bearer(t.system))
        assert r.json()["allowed"] is False and r.json()["reason"] == "withdrawn"
        assert http.get("/api/v1/check?subject=alice&purpose=news").status_code == 401
        feed = http.get("/api/v1/feed", headers=bearer(t.system)).json()
        assert [i["data"]["state"] for i in feed["items"]] == ["withdrawn"]
        # Security headers on pages, and no Referer leaks of link tokens.
        page = http.get("/login")
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in page.headers["content-security-policy"]


def test_expired_validity_is_reported_even_before_the_sweep(api, engine):
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "invoices", Actor())
    future = datetime.now(UTC) + timedelta(days=31)
    from consentflow import access

    with db.session_scope(engine) as s:
        assert access.check(s, "alice", "invoices", at=future).reason == "expired"


def test_consentflow_serve_runs_the_app(engine, database_url):
    """``consentflow serve`` in a subprocess: ready when its health endpoint answers."""
    import os
    import subprocess
    import sys
    import time

    from tests.support.net import free_port

    t = seed(engine)
    port = free_port()
    env = {**os.environ, "CONSENTFLOW_DATABASE_URL": database_url}
    exe = Path(sys.executable).with_name("consentflow")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a start-up bound, not a speed claim (loaded CI)
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "consentflow serve did not become healthy"
            time.sleep(0.1)
        r = httpx.get(f"{base}/api/v1/me", headers=bearer(t.support))
        assert r.json() == {"name": "sam", "scope": "support", "system": None}
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "consentflow"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

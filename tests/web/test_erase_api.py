"""``POST /api/v1/subjects/{subject}/erase``: admin only; 404, 409 and 422 change nothing; a link
of the erased person opens the "already deleted" page, and the access check answers no."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import select

from consentflow import audit, db, lifecycle, links, views
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, Subject
from tests.support.web import bearer, client, seed


@pytest.fixture
def api(engine: Any) -> Any:
    toks = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with client() as c:
        yield c, toks


def head(engine: Any) -> int:
    with db.session_scope(engine) as s:
        return audit.verify(s).head_seq


def test_only_admin_erases(api: Any, engine: Any) -> None:
    c, toks = api
    with db.session_scope(engine) as s:
        alice_id = s.exec(select(Subject.id).where(Subject.external_id == "alice")).one()
        token = links.issue(s, links.LinkAction.PREFERENCES, alice_id)
    before = head(engine)
    for scope in ("compliance", "support", "system"):
        r = c.post(
            "/api/v1/subjects/alice/erase",
            json={"reason": "ticket 9"},
            headers=bearer(toks.by_scope(scope)),
        )
        assert r.status_code == 403, (scope, r.text)
    assert head(engine) == before
    r = c.post(
        "/api/v1/subjects/alice/erase", json={"reason": "ticket 9"}, headers=bearer(toks.admin)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["withdrawn"], body["notified"], body["deliveries"]) == (["news"], ["crm"], 2)
    with db.session_scope(engine) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "subject.erased")).one()
    assert (entry.actor, entry.channel, entry.subject_ref) == (
        "api:root",
        "api",
        body["subject_ref"],
    )
    check = c.get("/api/v1/check?subject=alice&purpose=news", headers=bearer(toks.admin))
    assert check.json()["allowed"] is False
    page = c.get(f"/l/{token}")
    assert page.status_code == 410 and "alice" not in page.text
    assert "already deleted" in page.text


def test_refusals(api: Any, engine: Any) -> None:
    c, toks = api
    admin = bearer(toks.admin)
    before = head(engine)
    assert (
        c.post("/api/v1/subjects/nobody/erase", json={"reason": "x"}, headers=admin).status_code
        == 404
    )
    for bad in ({}, {"reason": ""}, {"reason": "x", "more": 1}, {"reason": "by alice@example.com"}):
        r = c.post("/api/v1/subjects/alice/erase", json=bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)
        assert "alice@example.com" not in r.text
    assert head(engine) == before
    ok = c.post("/api/v1/subjects/alice/erase", json={"reason": "ticket 9"}, headers=admin)
    assert ok.status_code == 200
    again = c.post("/api/v1/subjects/alice/erase", json={"reason": "ticket 9"}, headers=admin)
    assert again.status_code == 409 and "already erased" in again.json()["detail"]


def test_both_doors_answer_the_same_fields(api: Any, cli: Any) -> None:
    c, toks = api
    r = c.post("/api/v1/subjects/alice/erase", json={"reason": "t1"}, headers=bearer(toks.admin))
    out = cli("subject", "erase", "bob", "--reason", "t2", "--json")
    assert out.code == 0, out.err
    assert sorted(r.json()) == sorted(json.loads(out.out)) == sorted(views.ErasureOut.model_fields)

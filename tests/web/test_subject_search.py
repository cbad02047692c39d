"""Finding a person and their whole record: ``GET /api/v1/subjects?q=``,
``GET /api/v1/subjects/{subject}/overview`` and the pages ``/subjects`` and ``/subjects/{id}``.

Each search kind (external id with the erased earlier registrations, email address, subject
reference, tombstone), unknown and bad queries, who may read people (a system token may not),
an erased subject shown as a tombstone, every audit entry verified (and an edited one found),
and the access log keeping the pages' ids out. On both databases."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from consentflow import db, erasure, lifecycle, subjects
from consentflow.lifecycle import Actor
from consentflow.models import ActorType, AuditEntry, Channel, Subject
from consentflow.web.logs import AccessLogRedactor
from tests.support.web import Tokens, bearer, client, seed

SEARCH = "/api/v1/subjects"
SAM = Actor(ActorType.AGENT, Channel.SUPPORT, name="sam", reason="caller asked")


@pytest.fixture
def toks(engine: Engine) -> Tokens:
    """alice (alice@example.com): news given then withdrawn by an agent (a webhook to crm),
    invoices given; bob: asked for news (an open request); dora: registered, erased, and
    registered again under the same id."""
    made = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.grant(s, "alice", "invoices", Actor())
        lifecycle.revoke(s, "alice", "news", SAM)
        lifecycle.request(s, "bob", "news", Actor(ActorType.SYSTEM, Channel.SYSTEM))
        subjects.add(s, "dora", email="Dora.Smith@example.com")
        lifecycle.grant(s, "dora", "news", Actor())
    with db.session_scope(engine) as s:
        erasure.erase(s, "dora", Actor(ActorType.AGENT, Channel.API, name="root"), reason="t-42")
    with db.session_scope(engine) as s:
        subjects.add(s, "dora")
    return made


def _row(engine: Engine, external_id: str) -> Subject:
    with Session(engine) as s:
        return s.exec(select(Subject).where(Subject.external_id == external_id)).one()


def _tombstone(engine: Engine) -> Subject:
    with Session(engine) as s:
        return s.exec(select(Subject).where(Subject.erased_at.is_not(None))).one()  # type: ignore[union-attr]


def _search(c, token: str, q: str):
    return c.get(SEARCH, params={"q": q}, headers=bearer(token))


def test_search_by_external_id_email_and_reference(engine: Engine, toks: Tokens) -> None:
    alice = _row(engine, "alice")
    with client() as c:
        by_id = _search(c, toks.support, "alice").json()["matches"]
        by_email = _search(c, toks.support, "  Alice@EXAMPLE.com ").json()["matches"]
        by_ref = _search(c, toks.compliance, alice.subject_ref).json()["matches"]
        # An address stored with capitals is found as stored, and lowercased is not guessed.
        dora_new = _search(c, toks.admin, "dora").json()["matches"]
    assert [(m["external_id"], m["matched_by"]) for m in by_id] == [("alice", "external_id")]
    assert [(m["external_id"], m["matched_by"]) for m in by_email] == [("alice", "email")]
    assert [(m["external_id"], m["matched_by"]) for m in by_ref] == [("alice", "subject_ref")]
    assert by_id[0]["subject_ref"] == alice.subject_ref and by_id[0]["has_email"] is True
    assert all("email" not in m for m in by_id + by_email)  # never the address itself
    # dora now first, then her erased earlier registration, found through its reference.
    tomb = _tombstone(engine)
    assert [(m["external_id"], m["erased"]) for m in dora_new] == [
        ("dora", False),
        (tomb.external_id, True),
    ]
    assert dora_new[1]["subject_ref"] == tomb.subject_ref
    assert dora_new[1]["has_email"] is False and dora_new[1]["erased_at"] is not None


def test_an_erased_subject_is_found_by_reference_and_tombstone_not_by_address(
    engine: Engine, toks: Tokens
) -> None:
    tomb = _tombstone(engine)
    with client() as c:
        by_ref = _search(c, toks.support, tomb.subject_ref)
        by_tomb = _search(c, toks.support, tomb.external_id)
        by_address = _search(c, toks.support, "Dora.Smith@example.com")
        overview = c.get(f"{SEARCH}/{tomb.external_id}/overview", headers=bearer(toks.support))
    assert [m["matched_by"] for m in by_ref.json()["matches"]] == ["subject_ref"]
    assert [m["external_id"] for m in by_tomb.json()["matches"]] == [tomb.external_id]
    assert by_address.status_code == 404  # the address was erased with the person
    assert overview.status_code == 200, overview.text
    o = overview.json()
    assert (o["erased"], o["has_email"], o["locale"], o["receipt_url"]) == (True, False, None, None)
    assert [(c["purpose"], c["state"]) for c in o["consents"]] == [("news", "withdrawn")]
    assert {a["action"] for a in o["audit"]} >= {"subject.created", "subject.erased"}
    assert o["audit_ok"] is True
    assert {d["event_type"] for d in o["deliveries"]} == {"consent.withdrawn", "subject.erased"}


def test_unknown_and_bad_queries(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        unknown = _search(c, toks.support, "nobody")
        unknown_address = _search(c, toks.support, "nobody@example.com")
        spaced = _search(c, toks.support, "a b")
        bad_address = _search(c, toks.support, "ann@localhost")
        empty = c.get(SEARCH, params={"q": ""}, headers=bearer(toks.support))
        missing = c.get(SEARCH, headers=bearer(toks.support))
        too_long = _search(c, toks.support, "x" * 400)
        no_one = c.get(f"{SEARCH}/zed/overview", headers=bearer(toks.support))
        bad_path = c.get(f"{SEARCH}/a%20b/overview", headers=bearer(toks.support))
    for r in (unknown, unknown_address):
        assert r.status_code == 404
        assert r.json()["detail"].startswith("no such subject")
        assert "nobody" not in r.json()["detail"]  # the query (maybe an address) is not echoed
    for r in (spaced, bad_address):
        assert r.status_code == 422 and r.json()["detail"].startswith("q: ")
    for r in (empty, missing, too_long):
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "q"
    assert no_one.status_code == 404 and no_one.json()["detail"] == "no such subject 'zed'"
    assert bad_path.status_code == 422 and bad_path.json()["errors"][0]["field"] == "subject"


def test_who_may_read_people(engine: Engine, toks: Tokens) -> None:
    paths = [
        f"{SEARCH}?q=alice",
        f"{SEARCH}/alice/overview",
        "/subjects?q=alice",
        "/subjects/alice",
    ]
    with client() as c:
        for path in paths:
            for token in (toks.admin, toks.compliance, toks.support):
                assert c.get(path, headers=bearer(token)).status_code == 200, path
            system = c.get(path, headers=bearer(toks.system))
            assert system.status_code == 403, path
            assert c.get(path).status_code == 401, path
        # As for the subject's own read:
        assert c.get(f"{SEARCH}/alice", headers=bearer(toks.system)).status_code == 403


def test_overview_gathers_the_whole_record(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        alice = c.get(f"{SEARCH}/alice/overview", headers=bearer(toks.compliance)).json()
        bob = c.get(f"{SEARCH}/bob/overview", headers=bearer(toks.compliance)).json()
    assert [(x["purpose"], x["state"], x["counts_as"]) for x in alice["consents"]] == [
        ("invoices", "given", "given"),
        ("news", "withdrawn", "withdrawn"),
    ]
    invoices = alice["consents"][0]
    assert invoices["valid_until"] is not None and invoices["current_version"] == 1
    newest = alice["history"][0]
    assert [e["seq"] for e in alice["history"]] == [3, 2, 1]
    assert (newest["action"], newest["actor_type"], newest["actor"]) == ("revoke", "agent", "sam")
    assert (newest["channel"], newest["reason"], newest["purpose_version"]) == (
        "support",
        "caller asked",
        1,
    )
    (delivery,) = alice["deliveries"]
    assert (delivery["system"], delivery["purpose"], delivery["seq"]) == ("crm", "news", 3)
    assert (delivery["state"], delivery["attempts"], delivery["delivered_at"]) == (
        "pending",
        0,
        None,
    )
    assert delivery["event_id"] == newest["event_id"]
    assert alice["audit"][0]["action"] == "subject.created"
    assert all(a["verified"] == "ok" for a in alice["audit"]) and alice["audit_ok"]
    assert alice["receipt_url"] == "/api/v1/subjects/alice/receipt"
    assert alice["open_requests"] == []
    assert [(r["purpose"], r["kind"]) for r in bob["open_requests"]] == [("news", "collection")]
    with client() as c:
        receipt = c.get(alice["receipt_url"], headers=bearer(toks.compliance))
    assert receipt.status_code == 200


def test_an_edited_audit_entry_is_shown_as_modified(engine: Engine, toks: Tokens) -> None:
    ref = _row(engine, "alice").subject_ref
    with Session(engine) as s:
        seqs = list(s.exec(select(AuditEntry.seq).where(AuditEntry.subject_ref == ref)))
    edited = seqs[1]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_entry SET actor = 'someone else' WHERE seq = :seq"), {"seq": edited}
        )
    with client() as c:
        o = c.get(f"{SEARCH}/alice/overview", headers=bearer(toks.compliance)).json()
        page = c.get("/subjects/alice", headers=bearer(toks.compliance))
    verdicts = {a["seq"]: a["verified"] for a in o["audit"]}
    assert verdicts[edited] == "modified"
    assert {v for seq, v in verdicts.items() if seq != edited} == {"ok"}
    assert o["audit_ok"] is False
    assert "Some entries do not verify" in page.text and ">modified<" in page.text


def test_pages_search_and_drill_down(engine: Engine, toks: Tokens) -> None:
    tomb = _tombstone(engine)
    with client() as c:
        results = c.get("/subjects", params={"q": "dora"}, headers=bearer(toks.support))
        form = c.get("/subjects", headers=bearer(toks.support))
        unknown = c.get("/subjects", params={"q": "zed@example.com"}, headers=bearer(toks.support))
        bad = c.get("/subjects", params={"q": "a b"}, headers=bearer(toks.support))
        alice = c.get("/subjects/alice", headers=bearer(toks.support))
        erased = c.get(f"/subjects/{tomb.external_id}", headers=bearer(toks.support))
        missing = c.get("/subjects/zed", headers=bearer(toks.support))
    assert results.status_code == 200
    assert 'href="/subjects/dora"' in results.text
    assert f'href="/subjects/{tomb.external_id}"' in results.text
    assert form.status_code == 200 and 'id="results"' not in form.text
    assert unknown.status_code == 404 and "No such subject" in unknown.text
    assert "zed@example.com" not in unknown.text.replace('value="zed@example.com"', "")
    assert bad.status_code == 422 and "not an external id" in bad.text
    assert alice.status_code == 200
    assert 'href="/subjects/alice/record"' in alice.text
    assert 'href="/api/v1/subjects/alice/receipt"' in alice.text
    assert "alice@example.com" not in alice.text
    assert erased.status_code == 200 and "Erased subject" in erased.text
    assert "/record" not in erased.text and "/receipt" not in erased.text
    assert missing.status_code == 404 and "no such subject" in missing.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_access_log_keeps_page_ids_out(engine: Engine) -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', None, None
    )
    for path, logged in (
        ("/subjects/alice", "/subjects/{subject}"),
        ("/subjects/alice/record", "/subjects/{subject}/record"),
        ("/subjects?q=ann%40example.com", "/subjects"),
        ("/api/v1/subjects/alice/overview", "/api/v1/subjects/{subject}/overview"),
    ):
        record.args = ("127.0.0.1:1", "GET", path, "1.1", 200)
        AccessLogRedactor().filter(record)
        assert record.args[2] == logged

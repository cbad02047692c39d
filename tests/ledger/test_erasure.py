"""Erasure that keeps the proof, on both databases, with real receivers on loopback.

One person is erased: every given consent is withdrawn and propagated, each system that may hold
their data gets a signed ``subject.erased`` webhook with their real id (a paused one when it is
resumed), their outbox bodies are sealed under their data key and unreadable once it is
destroyed, their contact data, evidence and id are gone, and ``audit verify`` still passes while
an edit of what stays is still caught. Refusals change nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from consentflow import (
    access,
    audit,
    datakeys,
    db,
    erasure,
    integrity,
    lifecycle,
    purposes,
    subjects,
    systems,
)
from consentflow.delivery import engine as eng
from consentflow.delivery import ops
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    AuditEntry,
    Channel,
    ConsentEvent,
    Delivery,
    DeliveryAttempt,
    State,
    Subject,
    SubjectKey,
    utcnow,
)
from tests.support.webhooks import Receiver, verify

pytestmark = pytest.mark.usefixtures("allow_loopback")

FAST = eng.Options(timeout=5.0)
AGENT = Actor(ActorType.AGENT, Channel.SUPPORT, name="agent-ann")
EVIDENCE = {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}


def seed(engine: Engine, receiver: Receiver) -> dict[str, str]:
    """news (crm, active) and offers (ads, paused); alice gave news with evidence and offers,
    and had a consent for trial imported as given but ended; bob gave news. Returns secrets."""
    secrets: dict[str, str] = {}
    with db.session_scope(engine) as s:
        for key in ("news", "offers", "trial"):
            purposes.add(s, key, title=key.title(), validity_days=365)
        for name, keys in (("crm", ["news", "trial"]), ("ads", ["offers"])):
            _, secret = systems.add(s, name, keys, webhook_url=receiver.url(f"/{name}"))
            assert secret
            secrets[name] = secret
        alice = subjects.add(s, "alice", email="alice@example.com", locale="fr")
        subjects.add(s, "bob")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor(channel=Channel.WEB, evidence=EVIDENCE))
        lifecycle.grant(s, "alice", "offers", Actor())
        lifecycle.grant(s, "bob", "news", Actor(evidence={"ip": "198.51.100.1"}))
        ended = utcnow() - timedelta(days=1)
        row = lifecycle.ImportRow(alice.id or 0, "trial", State.GIVEN, ended - timedelta(30), ended)
        lifecycle.import_consents(s, [row], Actor(ActorType.IMPORT, Channel.IMPORT))
    with db.session_scope(engine) as s:
        ops.set_status(s, "ads", "pause", reason="maintenance")
    return secrets


def erase(engine: Engine, external_id: str = "alice", reason: str = "ticket 4711") -> Any:
    with db.session_scope(engine) as s:
        return erasure.erase(s, external_id, AGENT, reason=reason)


def rows(engine: Engine, model: Any, *where: Any) -> list[Any]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(model).where(*where)).all())


def findings(engine: Engine) -> list[str]:
    with db.session_scope(engine, readonly=True) as s:
        found: list[str] = integrity.check(s)["findings"]
        return found


def test_erasure_propagates_seals_and_shreds(
    engine: Engine, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = seed(engine, receiver)
    caplog.set_level(logging.DEBUG)
    done = erase(engine)
    assert (done.withdrawn, done.expired) == (["news", "offers"], ["trial"])
    assert done.notified == ["ads", "crm"]
    assert done.deliveries == 5 and done.evidence_removed == 1
    [alice] = rows(engine, Subject, col(Subject.subject_ref) == done.subject_ref)
    assert alice.external_id.startswith(erasure.TOMBSTONE) and alice.erased_at is not None
    assert (alice.email, alice.locale) == (None, None)
    events = rows(engine, ConsentEvent, ConsentEvent.subject_id == alice.id)
    assert [e.evidence for e in events] == [None] * len(events)
    stored = rows(engine, Delivery)
    assert all(datakeys.is_sealed(d.payload) for d in stored)  # all five are alice's
    assert not any("alice" in d.payload for d in stored)
    [entry] = rows(engine, AuditEntry, AuditEntry.action == "subject.erased")
    assert (entry.subject_ref, entry.actor, entry.detail["reason"]) == (
        done.subject_ref,
        "agent-ann",
        "ticket 4711",
    )
    assert "alice" not in json.dumps(entry.detail)
    assert findings(engine) == []
    with db.session_scope(engine, readonly=True) as s:
        assert not access.check(s, "alice", "news", "crm").allowed

    eng.deliver_due(engine, options=FAST, now=utcnow())  # crm: its withdrawals and the erasure
    bodies = [verify(r, secrets["crm"]) for r in receiver.at("/crm")]
    assert sorted(b["type"] for b in bodies) == [
        "consent.expired",
        "consent.withdrawn",
        "subject.erased",
    ]
    [erased] = [b for b in bodies if b["type"] == "subject.erased"]
    assert erased["data"]["subject"] == "alice" and erased["data"]["purposes"] == ["news", "trial"]
    assert erased["data"]["sequence"] == alice.last_seq  # after every event of theirs
    assert receiver.at("/ads") == []  # paused: held, not skipped
    with db.session_scope(engine) as s:
        assert erasure.shred_settled(s) == 0  # ads still has alice's withdrawal and erasure
        ops.set_status(s, "ads", "resume")
    eng.deliver_due(engine, options=FAST, now=utcnow())
    ads = [verify(r, secrets["ads"]) for r in receiver.at("/ads")]
    assert sorted((b["type"], b["data"]["subject"]) for b in ads) == [
        ("consent.withdrawn", "alice"),
        ("subject.erased", "alice"),
    ]
    with db.session_scope(engine) as s:
        assert erasure.shred_settled(s) == 1
        assert erasure.shred_settled(s) == 0
    [key] = rows(engine, SubjectKey)
    assert key.sealed_key is None and key.destroyed_at is not None
    with db.session_scope(engine) as s, pytest.raises(datakeys.Shredded, match="destroyed"):
        datakeys.require_readable(s, stored[0].payload)
    assert findings(engine) == []
    assert "alice" not in caplog.text and "example.com" not in caplog.text


def test_a_shredded_dead_letter_is_never_sent_again(engine: Engine, receiver: Receiver) -> None:
    seed(engine, receiver)
    receiver.set("/crm", 500)
    erase(engine)
    eng.deliver_due(engine, options=FAST, now=utcnow())  # crm fails once...
    with db.session_scope(engine) as s:  # ...and gives up (its schedule exhausted)
        s.execute(update(Delivery).values(state="dead").where(col(Delivery.system_id) == 1))
        s.execute(update(Delivery).values(state="delivered").where(col(Delivery.system_id) == 2))
        assert erasure.shred_settled(s) == 1
    [shredded] = rows(engine, AuditEntry, AuditEntry.action == "subject.shredded")
    assert shredded.detail == {"dead_deliveries": 3}
    receiver.set("/crm", 200)
    sent = len(receiver.at("/crm"))
    dead_letters = rows(engine, Delivery, Delivery.state == "dead")
    assert {d.last_error for d in dead_letters} == {erasure.SHREDDED_DEAD}
    with db.session_scope(engine) as s:
        every = [d.id or 0 for d in rows(engine, Delivery)]
        assert datakeys.shredded(s, every) == set(every)  # a bulk replay leaves them out
    [dead] = [d for d in dead_letters if d.event_type == "consent.withdrawn"]
    try:  # refused with one line (``delivery.ops.replay`` asks ``datakeys.require_readable``)
        with db.session_scope(engine) as s:
            ops.replay(s, dead.id or 0, actor="ops")
    except datakeys.Shredded as exc:
        assert "data key was destroyed" in str(exc)
        assert rows(engine, Delivery, Delivery.id == dead.id)[0].state == "dead"
    else:  # or, re-queued, the engine can only fail it: its body never leaves
        eng.deliver_due(engine, options=FAST, now=utcnow())
        last = rows(engine, DeliveryAttempt, DeliveryAttempt.delivery_id == dead.id)[-1]
        assert last.error_class == "Misconfigured"
    eng.deliver_due(engine, options=FAST, now=utcnow())
    assert len(receiver.at("/crm")) == sent  # nothing leaves with a body nobody can read


def test_refusals_change_nothing(engine: Engine, receiver: Receiver) -> None:
    seed(engine, receiver)
    with db.session_scope(engine) as s:
        head = audit.verify(s).head_seq
    for external_id, reason, error, message in (
        ("nobody", "ticket 1", NotFound, "unknown subject 'nobody'"),
        ("alice", "", InvalidInput, "give a reason"),
        ("alice", "asked by alice@example.com", InvalidInput, "email address"),
        ("alice", "alice asked", InvalidInput, "the person's id"),
    ):
        with pytest.raises(error, match=message):
            erase(engine, external_id, reason)
    with db.session_scope(engine) as s:
        assert audit.verify(s).head_seq == head
    assert rows(engine, Subject, Subject.external_id == "alice")[0].email == "alice@example.com"
    done = erase(engine, "alice", "malice report 4711")  # the id inside a word names nobody
    tombstone = rows(engine, Subject, Subject.subject_ref == done.subject_ref)[0].external_id
    with db.session_scope(engine) as s:
        head = audit.verify(s).head_seq
    for again in ("alice", tombstone):
        with pytest.raises(Conflict, match="is already erased"):
            erase(engine, again)
    with db.session_scope(engine) as s:
        assert audit.verify(s).head_seq == head
        with pytest.raises(NotFound):  # nothing is written for an erased subject again
            lifecycle.grant(s, tombstone, "news", Actor())


def test_refused_on_a_broken_record(engine: Engine, receiver: Receiver) -> None:
    seed(engine, receiver)
    with engine.begin() as conn:
        conn.execute(text("UPDATE consent_event SET reason = 'edited' WHERE seq = 1"))
    with pytest.raises(Conflict, match=r"refusing to erase a subject: audit verify fails: .*"):
        erase(engine)
    [alice] = rows(engine, Subject, Subject.external_id == "alice")
    assert alice.email == "alice@example.com" and alice.erased_at is None
    assert rows(engine, SubjectKey) == []


def test_verify_catches_edits_of_what_erasure_keeps(engine: Engine, receiver: Receiver) -> None:
    seed(engine, receiver)
    done = erase(engine)
    [alice] = rows(engine, Subject, Subject.subject_ref == done.subject_ref)
    [bob] = rows(engine, Subject, Subject.external_id == "bob")
    with engine.begin() as conn:
        conn.execute(
            update(ConsentEvent)
            .where(col(ConsentEvent.subject_id) == alice.id, col(ConsentEvent.seq) == 1)
            .values(purpose_version=9)
        )
        conn.execute(update(Subject).where(col(Subject.id) == bob.id).values(erased_at=utcnow()))
    found = findings(engine)
    assert any(f"subject {alice.subject_ref}" in f and "notice version" in f for f in found)
    assert any(f"subject {bob.subject_ref} is marked erased but no" in f for f in found)


def test_pruned_evidence_passes_only_before_the_retention_cutoff(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        subjects.add(s, "bob")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "bob", "news", Actor(evidence=EVIDENCE))
    with engine.begin() as conn:
        conn.execute(text("UPDATE consent_event SET evidence = NULL"))
    assert any("differs from audit entry" in f and "evidence" in f for f in findings(engine))
    for cutoff, clean in ((datetime(2000, 1, 1, tzinfo=UTC), False), (utcnow(), True)):
        with db.session_scope(engine) as s:
            audit.record(s, "retention.swept", detail={"evidence_before": cutoff.isoformat()})
        assert (findings(engine) == []) is clean


def test_a_returning_person_registers_again(engine: Engine, receiver: Receiver) -> None:
    seed(engine, receiver)
    first = erase(engine)
    with db.session_scope(engine) as s:
        again = subjects.add(s, "alice", email="alice@example.org")
        assert again.generation == 2 and again.subject_ref != first.subject_ref
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        assert access.check(s, "alice", "news").allowed
    assert findings(engine) == []
    second = erase(engine)
    assert second.withdrawn == ["news"] and second.subject_ref == again.subject_ref
    with pytest.raises(Conflict, match="already erased"):
        erase(engine)
    assert findings(engine) == []


def test_upgrade_from_0003_keeps_deliveries_and_foreign_keys(engine: Engine) -> None:
    """0004 rebuilds ``delivery`` on SQLite (attempts point at it) and alters it in place on
    PostgreSQL; either way the rows stay, foreign keys hold, and one target is required."""
    config = db.alembic_config(engine)
    command.downgrade(config, "0003")
    try:
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO system (name, status, created_at) VALUES ('crm', 'active', "
                "'2025-01-01')",
                "INSERT INTO purpose (key, current_version, created_at) VALUES ('news', 1, "
                "'2025-01-01')",
                "INSERT INTO subject (external_id, subject_ref, last_seq, created_at) VALUES "
                "('a', 'r', 1, '2025-01-01')",
                "INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state, "
                "purpose_version, occurred_at, recorded_at, actor_type, channel) VALUES "
                "('0123456789abcdef0123456789abcdef', 1, 1, 1, 'revoke', 'withdrawn', 1, "
                "'2025-01-01', '2025-01-01', 'subject', 'web')",
                "INSERT INTO delivery (system_id, event_id, webhook_id, event_type, payload, "
                "state, attempts, next_attempt_at, created_at) VALUES (1, "
                "'0123456789abcdef0123456789abcdef', 'msg_1', 'consent.withdrawn', '{}', "
                "'delivered', 1, '2025-01-01', '2025-01-01')",
                "INSERT INTO delivery_attempt (delivery_id, attempt, started_at) VALUES "
                "(1, 1, '2025-01-01')",
            ):
                conn.execute(text(statement))
    finally:
        command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM delivery_attempt")).scalar() == 1
        assert conn.execute(text("SELECT generation FROM subject")).scalar() == 1
    for bad in (
        "INSERT INTO delivery_attempt (delivery_id, attempt, started_at) VALUES "
        "(99, 1, '2025-01-01')",
        "INSERT INTO delivery (system_id, webhook_id, event_type, payload, state, attempts, "
        "next_attempt_at, created_at) VALUES (1, 'msg_2', 'x', '{}', 'pending', 0, "
        "'2025-01-01', '2025-01-01')",
    ):
        with pytest.raises(Exception, match=r"(?i)foreign key|check"), engine.begin() as conn:
            conn.execute(text(bad))

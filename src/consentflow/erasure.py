"""Erasure that keeps the proof (GDPR Art. 17): forget the person, keep what they consented to.

``erase`` does, in the caller's one transaction (a failure anywhere leaves nothing of it):

1. refuses on a record that fails ``audit verify`` (``integrity.require_intact``), then locks
   the subject (a concurrent erasure of the same person waits, then finds it erased);
2. withdraws every consent that is given, through the single write path (``ledger.write``), so
   history, audit entries and withdrawal webhooks are written as for any withdrawal; a given
   consent whose validity had ended is expired instead (effective at its end, as the sweep
   would), since an ended consent cannot be withdrawn;
3. enqueues one ``subject.erased`` webhook (``ledger._write.erasure_payload``) to every system
   with a webhook that received, or could have received, data about the person: those
   registered for a purpose the person has a consent row for, and those with any delivery about
   them. Paused and disabled systems get theirs too: held, never skipped, as withdrawals are;
4. seals every outbox body about the person under a data key of theirs (``datakeys``): the
   pending ones still go out with the real external id (the engine opens them when it claims
   them), and all of them become unreadable when ``shred_settled`` destroys the key;
5. removes the evidence (IP address, user agent) of their consent events (the chain keeps its
   keyed digest), the response excerpts of their deliveries' attempts and the error texts of
   their emails (a receiver or mail server may echo an id or address), and closes their open
   requests;
6. removes ``email`` and ``locale``, replaces ``external_id`` with a tombstone that the
   identifier rule can never produce (``~erased-`` and 32 random hex digits), sets
   ``erased_at``;
7. appends the ``subject.erased`` audit entry: who, when, why and the counts, naming the person
   by ``subject_ref`` only.

What stays: the subject row (its reference, sequence number and creation time), the consent
history and current state, the notices, the audit chain: pseudonymous proof of which purposes
were consented when, under which notice version. Whoever holds the reference key and the
external id can still find it (``subjects.reference``); nobody can get the id back from it.

Failure modes, one line each, nothing written: an unknown id is ``NotFound`` ("unknown subject
..."); an id erased before is ``Conflict`` ("... is already erased", found by its reference,
since the id itself is tombstoned); a broken record is ``Conflict`` (``require_intact``); a
reason that is empty, too long, unprintable, or holds an email address or the id itself is
``InvalidInput`` (it is kept in the audit trail forever).

``shred_settled`` destroys the data keys of erased subjects with nothing left pending (the
retention sweep calls it each run); one ``subject.shredded`` entry each, with the count of their
dead letters (a system that never acknowledged the erasure: replaying it is refused from then
on). Later writes never reach an erased subject: ``ledger.lock_subjects`` does not find it by
its tombstone, and it has no given consent left for the sweeps.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import exists, insert, null, update
from sqlmodel import Session, col, select

from consentflow import audit, datakeys, integrity, keys, purposes, subjects
from consentflow.actors import Actor, audit_fields, check_reason, system_actor
from consentflow.errors import Conflict, InvalidInput
from consentflow.ledger._changes import items_for
from consentflow.ledger._rules import has_lapsed
from consentflow.ledger._write import (
    ERASED_EVENT,
    Item,
    LockedSubject,
    erasure_payload,
    load_current,
    note_outbox,
    write,
)
from consentflow.models import (
    Action,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    EmailMessage,
    Purpose,
    RequestStatus,
    State,
    Subject,
    SubjectKey,
    System,
    SystemPurpose,
    utcnow,
)
from consentflow.views import ErasureOut

#: What an erased subject's external id starts with (``~`` is outside the identifier rule).
TOMBSTONE = "~erased-"
#: The last error of a dead letter whose subject's data key was destroyed.
SHREDDED_DEAD = "its subject was erased and their data key destroyed: it can never be sent again"
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def erase(session: Session, external_id: str, actor: Actor, *, reason: str) -> ErasureOut:
    """Erase the subject ``external_id`` (see the module docstring), in the caller's one
    transaction; returns what was done."""
    reason = _check_reason(reason, external_id)
    locked = _lock(session, external_id)
    integrity.require_intact(session, "erase a subject")
    now = utcnow()
    withdrawer = Actor(actor.type, actor.channel, actor.name, reason, actor.run_id)
    changes = write(
        session, _withdrawals(session, locked, withdrawer, now), now=now, propagate=True
    )
    sid = locked.id
    key = datakeys.create(session, sid, now=now)
    notified = _notify(session, locked, key, now)
    sealed = _seal_outbox(session, sid, key)
    evidence = _scrub(session, sid, now)
    session.execute(
        update(Subject)
        .where(col(Subject.id) == sid)
        .values(
            external_id=TOMBSTONE + secrets.token_hex(16),
            email=None,
            locale=None,
            erased_at=now,
        )
    )
    withdrawn = sorted(c.purpose for c in changes if c.action is Action.REVOKE)
    expired = sorted(c.purpose for c in changes if c.action is Action.EXPIRE)
    deliveries = sum(c.deliveries for c in changes) + len(notified)
    audit.record(
        session,
        "subject.erased",
        subject_ref=locked.subject_ref,
        detail={
            "reason": reason,
            "withdrawn": withdrawn,
            "expired": expired,
            "systems": notified,
            "deliveries": deliveries,
            "sealed": sealed,
            "evidence_removed": evidence,
        },
        **audit_fields(actor),
    )
    return ErasureOut(
        subject_ref=locked.subject_ref,
        erased_at=now,
        withdrawn=withdrawn,
        expired=expired,
        notified=notified,
        deliveries=deliveries,
        evidence_removed=evidence,
    )


def _check_reason(reason: str, external_id: str) -> str:
    """The reason as kept forever in the audit trail: given, printable, naming nobody."""
    reason = check_reason(reason.strip())
    if not reason:
        raise InvalidInput("give a reason for the erasure (e.g. the request's reference)")
    eid = external_id.strip()
    # the id as a word of its own: "ed" is no reason to refuse "requested by the person"
    named = bool(eid) and re.search(rf"(?<![\w.-]){re.escape(eid)}(?![\w.-])", reason)
    if _EMAIL.search(reason) or named:
        raise InvalidInput(
            "the reason is kept in the audit trail for good: it must not hold an email address "
            "or the person's id (give the request's reference instead)"
        )
    return reason


def _lock(session: Session, external_id: str) -> LockedSubject:
    """The subject, locked; ``NotFound``, or ``Conflict`` if erased before."""
    row = session.exec(
        select(Subject.id, Subject.subject_ref, Subject.last_seq)
        .where(Subject.external_id == external_id, col(Subject.erased_at).is_(None))
        .with_for_update()
    ).first()
    if row is not None and row[0] is not None:
        return LockedSubject(row[0], external_id, row[1], row[2])
    ref = subjects.reference(keys.reference_key(session), external_id)
    erased = session.exec(
        select(Subject.id).where(
            (col(Subject.subject_ref) == ref) | (col(Subject.external_id) == external_id),
            col(Subject.erased_at).is_not(None),
        )
    ).first()
    if erased is not None:
        raise Conflict(f"subject {external_id!r} is already erased")
    raise subjects.unknown(external_id)


def _withdrawals(
    session: Session, subject: LockedSubject, actor: Actor, now: datetime
) -> list[Item]:
    """What ends each given consent: a withdrawal, or an expiry if its validity had ended."""
    current = load_current(session, [subject.id])
    given = {
        pid: (cid, cur) for (_sid, pid), (cid, cur) in current.items() if cur.state is State.GIVEN
    }
    if not given:
        return []
    keys_by_id: dict[int, str] = {
        pid: key
        for pid, key in session.exec(
            select(Purpose.id, Purpose.key).where(col(Purpose.id).in_(list(given)))
        ).all()
        if pid is not None
    }
    infos = purposes.info(session, sorted(keys_by_id.values()))
    items = []
    for pid, (cid, cur) in sorted(given.items()):
        if has_lapsed(cur.state, cur.valid_until, now):
            action, who = Action.EXPIRE, system_actor(actor.run_id)
        else:
            action, who = Action.REVOKE, actor
        items += items_for(action, subject, infos[keys_by_id[pid]], cid, cur, who, now)
    return items


def _notify(session: Session, subject: LockedSubject, key: Any, now: datetime) -> list[str]:
    """3. One ``subject.erased`` delivery per system that may hold data about the subject;
    returns the systems' names."""
    sid = subject.id
    reach: dict[int, set[str]] = defaultdict(set)
    names: dict[int, str] = {}
    registered = (
        select(System.id, System.name, Purpose.key)
        .join(SystemPurpose, col(SystemPurpose.system_id) == System.id)
        .join(Consent, col(Consent.purpose_id) == SystemPurpose.purpose_id)
        .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        .where(col(Consent.subject_id) == sid, col(System.webhook_url).is_not(None))
    )
    received = (
        select(System.id, System.name, Purpose.key)
        .join(Delivery, col(Delivery.system_id) == System.id)
        .join(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .where(col(ConsentEvent.subject_id) == sid, col(System.webhook_url).is_not(None))
    )
    for stmt in (registered, received):
        for system_id, name, purpose in session.exec(stmt):
            assert system_id is not None
            reach[system_id].add(purpose)
            names[system_id] = name
    if not reach:
        return []
    rows = []
    for system_id, purpose_keys in sorted(reach.items()):
        body = erasure_payload(subject.external_id, subject.last_seq, now, sorted(purpose_keys))
        rows.append(
            {
                "system_id": system_id,
                "erasure_subject_id": sid,
                "webhook_id": f"msg_{uuid.uuid4().hex}",
                "event_type": ERASED_EVENT,
                "payload": datakeys.seal(key, sid, orjson.dumps(body, option=_JSON).decode()),
                "state": DeliveryState.PENDING.value,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    session.execute(insert(Delivery), rows)
    note_outbox(session, len(rows))
    return sorted(names[s] for s in reach)


def _seal_outbox(session: Session, subject_id: int, key: Any) -> int:
    """4. Every body about the subject, sealed under their data key; returns how many were
    sealed now (the ``subject.erased`` ones were written sealed)."""
    rows = session.exec(
        select(Delivery.id, Delivery.payload)
        .join(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .where(col(ConsentEvent.subject_id) == subject_id)
    ).all()
    plain = [(i, p) for i, p in rows if not datakeys.is_sealed(p)]
    if plain:
        session.execute(
            update(Delivery),
            [{"id": i, "payload": datakeys.seal(key, subject_id, p)} for i, p in plain],
        )
    return len(plain)


def _scrub(session: Session, subject_id: int, now: datetime) -> int:
    """5. Evidence, response excerpts, email errors and open requests; returns how many events
    lost their evidence."""
    removed = session.execute(
        update(ConsentEvent)
        .where(col(ConsentEvent.subject_id) == subject_id, col(ConsentEvent.evidence).is_not(None))
        .values(evidence=null())
    )
    theirs = (
        select(Delivery.id)
        .join(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .where(col(ConsentEvent.subject_id) == subject_id)
    )
    session.execute(
        update(DeliveryAttempt)
        .where(col(DeliveryAttempt.delivery_id).in_(theirs))
        .values(response_excerpt=None)
    )
    session.execute(
        update(EmailMessage).where(col(EmailMessage.subject_id) == subject_id).values(error=None)
    )
    session.execute(
        update(ConsentRequest)
        .where(
            col(ConsentRequest.subject_id) == subject_id,
            col(ConsentRequest.status) == RequestStatus.OPEN.value,
        )
        .values(status=RequestStatus.LAPSED.value, closed_at=now)
    )
    count: int = getattr(removed, "rowcount", 0)
    return count


def _pending(subject_id: Any) -> Any:
    """Whether a delivery about ``subject_id`` (a column) is still pending."""
    pending = DeliveryState.PENDING.value
    by_event = exists().where(
        col(Delivery.event_id) == ConsentEvent.id,
        col(ConsentEvent.subject_id) == subject_id,
        col(Delivery.state) == pending,
    )
    by_erasure = exists().where(
        col(Delivery.erasure_subject_id) == subject_id, col(Delivery.state) == pending
    )
    return by_event | by_erasure


def shred_settled(session: Session, *, now: datetime | None = None) -> int:
    """Destroy the data keys of erased subjects with no delivery left pending (held ones count
    as pending); one ``subject.shredded`` audit entry each. Returns how many."""
    now = now or utcnow()
    settled = session.exec(
        select(SubjectKey.subject_id, Subject.subject_ref)
        .join(Subject, col(Subject.id) == SubjectKey.subject_id)
        .where(
            col(SubjectKey.sealed_key).is_not(None),
            col(Subject.erased_at).is_not(None),
            ~_pending(SubjectKey.subject_id),
        )
        .order_by(col(SubjectKey.subject_id))
        .with_for_update(of=SubjectKey)
    ).all()
    if not settled:
        return 0
    ids = [sid for sid, _ref in settled]
    dead = _dead_counts(session, ids)
    destroyed = datakeys.destroy(session, ids, now=now)
    session.execute(  # say so where operators look for dead letters
        update(Delivery)
        .where(
            col(Delivery.id).in_(_deliveries_of(ids)),
            col(Delivery.state) == DeliveryState.DEAD.value,
        )
        .values(last_error=SHREDDED_DEAD)
    )
    audit.append(
        session,
        [
            audit.Entry(
                action="subject.shredded",
                subject_ref=ref,
                detail={"dead_deliveries": dead.get(sid, 0)},
                **audit_fields(system_actor()),
            )
            for sid, ref in settled
        ],
        now=now,
    )
    return destroyed


def _deliveries_of(subject_ids: list[int]) -> Any:
    """The ids of every delivery about ``subject_ids`` (a subquery)."""
    by_event = (
        select(Delivery.id)
        .join(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .where(col(ConsentEvent.subject_id).in_(subject_ids))
    )
    by_erasure = select(Delivery.id).where(col(Delivery.erasure_subject_id).in_(subject_ids))
    return by_event.union_all(by_erasure)


def _dead_counts(session: Session, subject_ids: list[int]) -> dict[int, int]:
    """Dead letters about each subject: systems that never acknowledged what they were sent."""
    counts: dict[int, int] = defaultdict(int)
    dead = col(Delivery.state) == DeliveryState.DEAD.value
    for sid in session.exec(
        select(ConsentEvent.subject_id)
        .join(Delivery, col(Delivery.event_id) == ConsentEvent.id)
        .where(col(ConsentEvent.subject_id).in_(subject_ids), dead)
    ).all():
        counts[sid] += 1
    for erased in session.exec(
        select(Delivery.erasure_subject_id).where(
            col(Delivery.erasure_subject_id).in_(subject_ids), dead
        )
    ).all():
        if erased is not None:
            counts[erased] += 1
    return dict(counts)


def is_erased(subject: Subject) -> bool:
    return subject.erased_at is not None

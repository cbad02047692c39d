"""The single write path: every consent change is written here, and only here.

``write`` takes the changes ``plan`` decided (``Item``s, their subjects locked by
``lock_subjects``) and, in the caller's single transaction, writes:

1. the subject's new sequence number (the subject row is locked first, so concurrent writers of
   the same subject queue instead of losing an update),
2. the new current state (``consent``) and the history event (``consent_event``),
3. the collection requests a change opens or answers (``consent_request``),
4. one outbox row per subscribed downstream system when permission is withdrawn, and the note
   (``note_outbox``) that wakes delivery after commit: this is the only place outbox rows of
   consent changes are made,
5. the audit entries (last, see ``audit.py``).

Single changes and batch changes share it, so a batch writes exactly the rows the single forms
would, in a handful of statements per batch instead of one per consent (``db.Writer``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

import orjson
from sqlmodel import Session, col, select

from consentflow import audit
from consentflow.actors import Actor
from consentflow.db import Column, Writer
from consentflow.keys import reference_key
from consentflow.ledger._rules import Current, Outcome
from consentflow.models import (
    WITHDRAWING_STATES,
    Action,
    Consent,
    DeliveryState,
    RequestKind,
    RequestStatus,
    State,
    Subject,
    System,
    SystemPurpose,
)
from consentflow.purposes import PurposeInfo


class Change(NamedTuple):
    """One committed (or about to be committed) consent change, as reported to callers."""

    event_id: uuid.UUID
    external_id: str
    subject_ref: str
    purpose: str
    purpose_version: int
    seq: int
    action: Action
    previous_state: State | None
    state: State
    occurred_at: datetime
    recorded_at: datetime
    valid_until: datetime | None
    deliveries: int = 0


def new_event_id() -> uuid.UUID:
    """A new event id: a UUIDv7 (RFC 9562), 48 bits of Unix milliseconds then 74 random bits.

    Ids made later sort later, so the history's primary key and the outbox's indexes on it grow
    at one end; random (v4) ids put each row on a different index page, which cost the batch
    writes about 40 % of their time (SQLite writes every page a transaction touched)."""
    ms, rand = time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10))
    high = (rand >> 62) & 0xFFF  # 12 random bits after the version
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | high << 64 | 0b10 << 62 | rand & (1 << 62) - 1)


def new_webhook_id() -> str:
    """A new outbox row's ``webhook-id``: unique, and time-ordered for the same reason (32 hex
    digits: the milliseconds, then 80 random bits)."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class LockedSubject:
    """A subject row locked for this transaction, with the sequence number it has reached."""

    id: int
    external_id: str
    subject_ref: str
    last_seq: int


@dataclass(slots=True)
class Item:
    """One change to write: what ``plan`` decided for one consent, and who asked."""

    subject: LockedSubject
    purpose: PurposeInfo
    consent_id: int | None
    previous: State | None
    outcome: Outcome
    action: Action
    actor: Actor
    seq: int = 0
    event_id: uuid.UUID = field(default_factory=new_event_id)
    deliveries: int = 0


def lock_subjects(
    session: Session, *, ids: Iterable[int] | None = None, external_ids: Iterable[str] | None = None
) -> dict[int, LockedSubject]:
    """Lock subject rows (PostgreSQL; in id order, so two batches never deadlock). An erased
    subject is never found by its (tombstoned) external id: nothing is written for it again."""
    stmt = select(
        col(Subject.id), col(Subject.external_id), col(Subject.subject_ref), col(Subject.last_seq)
    )
    if ids is not None:
        stmt = stmt.where(col(Subject.id).in_(sorted(set(ids))))
    if external_ids is not None:
        stmt = stmt.where(col(Subject.external_id).in_(sorted(set(external_ids))))
        stmt = stmt.where(col(Subject.erased_at).is_(None))
    rows = session.exec(stmt.order_by(col(Subject.id)).with_for_update()).all()
    return {sid: LockedSubject(sid, ext, ref, seq) for sid, ext, ref, seq in rows if sid}


_CURRENT_COLUMNS: list[Any] = [
    Consent.id,
    Consent.subject_id,
    Consent.purpose_id,
    Consent.state,
    Consent.purpose_version,
    Consent.given_at,
    Consent.valid_until,
]


def load_current(
    session: Session, subject_ids: Iterable[int]
) -> dict[tuple[int, int], tuple[int, Current]]:
    """The consents of ``subject_ids``, by (subject id, purpose id): (consent id, as the rules
    see it)."""
    # Columns, not ORM objects: the write path changes these rows behind the session's back.
    stmt = select(*_CURRENT_COLUMNS).where(col(Consent.subject_id).in_(list(subject_ids)))
    return {
        (sid, pid): (cid, Current(State(state), version, given_at, valid_until))
        for cid, sid, pid, state, version, given_at, valid_until in session.exec(stmt)
        if cid is not None
    }


def write(
    session: Session,
    items: list[Item],
    *,
    now: datetime,
    propagate: bool,
    preface: Sequence[audit.Entry] = (),
) -> list[Change]:
    """Write state, history, requests, outbox and audit for ``items`` whose subjects are locked.

    Each step is one many-row statement for the whole batch (see ``db.Writer``). ``preface``
    entries join the audit chain just before the items' own (e.g. the subjects an import created).
    """
    if not items:
        audit.append(session, preface, now=now)
        return []
    w = Writer(session)
    _number(w, items)
    _write_state(w, items, now)
    _write_history(w, items, now)
    _track_requests(w, items, now)
    if propagate:
        _enqueue(session, w, [i for i in items if i.outcome.state in WITHDRAWING_STATES], now)
    secret = reference_key(session) if any(i.actor.evidence is not None for i in items) else b""
    audit.append(session, chain(preface, _audit_entries(items, secret)), now=now)  # last
    return [_change(i, now) for i in items]


# ------------------------------------------------------------------------------------ the steps

_ID, _SEQ = Column("id", "bigint"), Column("last_seq", "bigint")
_STATE_COLUMNS = [
    Column("state", "text"),
    Column("purpose_version", "int"),
    Column("given_at", "timestamptz"),
    Column("valid_until", "timestamptz"),
    Column("updated_at", "timestamptz"),
    Column("last_event_id", "uuid"),
    Column("reminder_stage", "int"),
]
_NEW_CONSENT_COLUMNS = [
    *_STATE_COLUMNS,
    Column("subject_id", "bigint"),
    Column("purpose_id", "bigint"),
]
_EVENT_COLUMNS = [
    Column(name, pg_type)
    for name, pg_type in (
        ("id", "uuid"), ("subject_id", "bigint"), ("purpose_id", "bigint"), ("seq", "int"),
        ("action", "text"), ("state", "text"), ("previous_state", "text"),
        ("purpose_version", "int"), ("occurred_at", "timestamptz"),
        ("recorded_at", "timestamptz"), ("valid_until", "timestamptz"), ("actor_type", "text"),
        ("actor", "text"), ("channel", "text"), ("reason", "text"), ("evidence", "json"),
        ("run_id", "text"),
    )
]  # fmt: skip


def _number(w: Writer, items: list[Item]) -> None:
    """1. Sequence numbers, per subject, strictly increasing."""
    for item in items:
        item.subject.last_seq += 1
        item.seq = item.subject.last_seq
    subjects = {item.subject.id: item.subject for item in items}
    w.update("subject", _ID, [_SEQ], [(s.id, s.last_seq) for s in subjects.values()])


def _write_state(w: Writer, items: list[Item], now: datetime) -> None:
    """2a. The current state. A consent changed twice in one batch (an ended consent expired,
    then given again) gets one state write: the last."""
    existing, new = [], []
    last = {(i.subject.id, i.purpose.id): i for i in items}
    now_db = w.ts(now)
    for i in last.values():
        o = i.outcome
        row = (
            o.state.value,
            o.purpose_version,
            w.ts(o.given_at),
            w.ts(o.valid_until),
            now_db,
            w.uuid(i.event_id),
            None,  # reminder_stage: the validity is new, or no longer counts
        )
        if i.consent_id:
            existing.append((i.consent_id, *row))
        else:
            new.append((*row, i.subject.id, i.purpose.id))
    w.update("consent", _ID, _STATE_COLUMNS, existing)
    w.insert("consent", _NEW_CONSENT_COLUMNS, new)


def _write_history(w: Writer, items: list[Item], now: datetime) -> None:
    """2b. One history event per change."""
    now_db = w.ts(now)
    w.insert("consent_event", _EVENT_COLUMNS, [_event_row(w, i, now_db) for i in items])


def _event_row(w: Writer, i: Item, now_db: Any) -> tuple[Any, ...]:
    evidence = i.actor.evidence
    return (
        w.uuid(i.event_id),
        i.subject.id,
        i.purpose.id,
        i.seq,
        i.action.value,
        i.outcome.state.value,
        i.previous.value if i.previous else None,
        i.outcome.purpose_version,
        w.ts(i.outcome.occurred_at),
        now_db,
        w.ts(i.outcome.valid_until),
        i.actor.type.value,
        i.actor.name,
        i.actor.channel.value,
        i.actor.reason,
        orjson.dumps(evidence).decode() if evidence is not None else None,
        i.actor.run_id,
    )


_ANSWERS = frozenset({Action.GRANT, Action.REFUSE, Action.RENEW, Action.REVOKE})


def _track_requests(w: Writer, items: list[Item], now: datetime) -> None:
    """3. Requests: opened by a request, answered by any answer from the subject."""
    now_db = w.ts(now)
    w.executemany(
        "INSERT INTO consent_request (subject_id, purpose_id, purpose_version, kind, status,"
        " requested_at, followups_sent) VALUES (?,?,?,?,?,?,0)",
        [
            (
                i.subject.id,
                i.purpose.id,
                i.outcome.purpose_version,
                RequestKind.COLLECTION.value,
                RequestStatus.OPEN.value,
                now_db,
            )
            for i in items
            if i.outcome.state is State.REQUESTED
        ],
    )
    w.executemany(
        "UPDATE consent_request SET status = ?, closed_at = ?"
        " WHERE subject_id = ? AND purpose_id = ? AND status = ?",
        [
            (
                RequestStatus.ANSWERED.value,
                now_db,
                i.subject.id,
                i.purpose.id,
                RequestStatus.OPEN.value,
            )
            for i in items
            if i.action in _ANSWERS
        ],
    )


def _audit_entries(items: list[Item], secret: bytes) -> Iterator[audit.Entry]:
    """5. One audit entry per change (chained last, after any preface), in the chain's format 2:
    the evidence itself stays in the history; the chain holds its keyed hash (``secret``, the
    reference key; unused when no change has evidence)."""
    for i in items:
        yield audit.Entry(
            action=f"consent.{i.action.value}",
            subject_ref=i.subject.subject_ref,
            purpose_key=i.purpose.key,
            actor_type=i.actor.type.value,
            actor=i.actor.name,
            channel=i.actor.channel.value,
            run_id=i.actor.run_id,
            detail={
                "event_id": i.event_id,
                "seq": i.seq,
                "from": i.previous,
                "to": i.outcome.state,
                "purpose_version": i.outcome.purpose_version,
                "occurred_at": i.outcome.occurred_at,
                "valid_until": i.outcome.valid_until,
                "reason": i.actor.reason,
                "deliveries": i.deliveries,
                "v": audit.CONSENT_FORMAT,
                "evidence": audit.evidence_digest(secret, i.actor.evidence),
            },
        )


def _change(i: Item, now: datetime) -> Change:
    return Change(
        event_id=i.event_id,
        external_id=i.subject.external_id,
        subject_ref=i.subject.subject_ref,
        purpose=i.purpose.key,
        purpose_version=i.outcome.purpose_version,
        seq=i.seq,
        action=i.action,
        previous_state=i.previous,
        state=i.outcome.state,
        occurred_at=i.outcome.occurred_at,
        recorded_at=now,
        valid_until=i.outcome.valid_until,
        deliveries=i.deliveries,
    )


# ------------------------------------------------------------------------------- 4. the outbox

_DELIVERY_COLUMNS = [
    Column(name, pg_type)
    for name, pg_type in (
        ("system_id", "bigint"), ("event_id", "uuid"), ("webhook_id", "text"),
        ("event_type", "text"), ("payload", "text"), ("state", "text"), ("attempts", "int"),
        ("next_attempt_at", "timestamptz"), ("created_at", "timestamptz"),
    )
]  # fmt: skip


def note_outbox(session: Session, rows: int) -> None:
    """Record that this transaction enqueued (or re-queued) ``rows`` deliveries, and wake the
    delivery loops when it commits.

    Called by the write path for new outbox rows, and by ``delivery.ops`` when deliveries are
    replayed, redelivered or resumed: whichever door asked, the commit wakes ``propagate``. On
    PostgreSQL this issues ``pg_notify('consentflow_outbox', '')`` in this same transaction, so
    the notification is delivered exactly at commit and never after a rollback (PostgreSQL folds
    repeated identical notifications of one transaction into one); the channel is
    ``delivery.wakeup.CHANNEL``. On SQLite the loops poll (``delivery.wakeup.Poller``).
    """
    if rows <= 0:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql("SELECT pg_notify('consentflow_outbox', '')")


def webhook_payload(change: Item, recorded_at: datetime) -> dict[str, Any]:
    """The body downstream systems receive: identifiers and facts only, no email, no name."""
    return {
        "type": f"consent.{change.outcome.state.value}",
        "timestamp": recorded_at,
        "data": {
            "subject": change.subject.external_id,
            "purpose": change.purpose.key,
            "purpose_version": change.outcome.purpose_version,
            "state": change.outcome.state.value,
            "effective_at": change.outcome.occurred_at,
            "event_id": change.event_id,
            "sequence": change.seq,
        },
    }


#: The event type of the webhook that tells a system a person was erased (``erasure``).
ERASED_EVENT = "subject.erased"


def erasure_payload(
    external_id: str, sequence: int, erased_at: datetime, systems_purposes: list[str]
) -> dict[str, Any]:
    """The body of a ``subject.erased`` webhook: delete everything you hold about this person.

    ``sequence`` is the subject's last sequence number (after the withdrawals the erasure wrote),
    so it sorts after every consent event of theirs; ``purposes`` are the purposes the receiving
    system is registered for (what it may hold about them)."""
    return {
        "type": ERASED_EVENT,
        "timestamp": erased_at,
        "data": {
            "subject": external_id,
            "erased_at": erased_at,
            "sequence": sequence,
            "purposes": systems_purposes,
        },
    }


def _subscribers(session: Session, purpose_ids: set[int]) -> dict[int, list[int]]:
    """System ids with a webhook, by purpose id (paused and disabled ones included)."""
    subscribers: dict[int, list[int]] = {}
    stmt = (
        select(SystemPurpose.purpose_id, SystemPurpose.system_id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(SystemPurpose.purpose_id).in_(purpose_ids))
        .where(col(System.webhook_url).is_not(None))
    )
    for purpose_id, system_id in session.exec(stmt):
        subscribers.setdefault(purpose_id, []).append(system_id)
    return subscribers


def _enqueue(session: Session, w: Writer, items: list[Item], now: datetime) -> None:
    """4. One pending delivery per withdrawing change and subscribed system with a webhook.

    Paused and disabled systems get their rows too: they are held, never skipped.
    """
    if not items:
        return
    subscribers = _subscribers(session, {i.purpose.id for i in items})
    if not subscribers:
        return
    now_db = w.ts(now)
    rows: list[tuple[Any, ...]] = []
    for item in items:
        systems = subscribers.get(item.purpose.id, [])
        if not systems:
            continue
        payload = orjson.dumps(
            webhook_payload(item, now), option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
        ).decode()
        item.deliveries = len(systems)
        event_type = f"consent.{item.outcome.state.value}"
        rows.extend(
            (
                system_id,
                w.uuid(item.event_id),
                new_webhook_id(),
                event_type,
                payload,
                DeliveryState.PENDING.value,
                0,
                now_db,
                now_db,
            )
            for system_id in systems
        )
    w.insert("delivery", _DELIVERY_COLUMNS, rows)
    note_outbox(session, len(rows))

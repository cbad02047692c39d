"""The consent lifecycle: which changes are allowed, and the one way they are written.

``RULES`` and ``plan`` are the whole rule book: from which states each action may start, what it
leads to, and how the validity is stamped. Everything that changes a consent (the CLI, the web app,
the flows, the import) goes through ``_write``, which in the caller's single transaction writes:

1. the subject's new sequence number (the subject row is locked first, so concurrent writers of
   the same subject queue instead of losing an update),
2. the new current state (``consent``) and the history event (``consent_event``),
3. one outbox row per subscribed downstream system when permission is withdrawn,
4. the audit entries (last, see ``audit.py``).

Single changes (``grant``, ``revoke`` …) and batch changes (``expire_due``, ``invalidate_stale``,
``import_consents``) share that path, so a batch writes exactly the rows the single forms would,
in a handful of statements per batch instead of one per consent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import chain
from typing import Any, NamedTuple

import orjson
from sqlmodel import Session, col, select

from consentflow import audit, purposes

# Re-exported: callers build actors with the changes they ask for.
from consentflow.actors import Actor as Actor
from consentflow.actors import agent_actor as agent_actor
from consentflow.actors import system_actor as system_actor
from consentflow.db import Column, Writer
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.models import (
    WITHDRAWING_STATES,
    Action,
    Consent,
    ConsentEvent,
    DeliveryState,
    Purpose,
    RequestKind,
    RequestStatus,
    State,
    Subject,
    System,
    SystemPurpose,
    utcnow,
)
from consentflow.purposes import PurposeInfo

# --------------------------------------------------------------------------------------------
# The rule book
# --------------------------------------------------------------------------------------------

_ENDED = frozenset({None, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.INVALIDATED})


@dataclass(frozen=True)
class Rule:
    """An action may start from ``allowed`` states (None: no consent yet) and leads to ``to``."""

    allowed: frozenset[State | None]
    to: State | None  # None: the caller names the state (import)
    #: What to do instead, shown when the action is refused.
    hint: str


RULES: dict[Action, Rule] = {
    Action.REQUEST: Rule(_ENDED, State.REQUESTED, "there is nothing to ask"),
    Action.GRANT: Rule(_ENDED | {State.REQUESTED}, State.GIVEN, "renew it to extend the validity"),
    Action.REFUSE: Rule(
        _ENDED - {State.REFUSED} | {State.REQUESTED},
        State.REFUSED,
        "revoke it to withdraw a given consent",
    ),
    Action.REVOKE: Rule(frozenset({State.GIVEN}), State.WITHDRAWN, "there is nothing to withdraw"),
    Action.RENEW: Rule(frozenset({State.GIVEN}), State.GIVEN, "grant it again instead"),
    Action.EXPIRE: Rule(frozenset({State.GIVEN}), State.EXPIRED, "only given consents expire"),
    Action.INVALIDATE: Rule(
        frozenset({State.GIVEN}), State.INVALIDATED, "only given consents can be invalidated"
    ),
    Action.IMPORT: Rule(frozenset({None}), None, "the subject already has a consent for it"),
}

#: States an import may bring in from another platform.
IMPORTABLE_STATES = frozenset(
    {State.GIVEN, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.REQUESTED}
)


class Current(NamedTuple):
    """A consent as the rules see it (None fields: no consent yet)."""

    state: State | None = None
    purpose_version: int | None = None
    given_at: datetime | None = None
    valid_until: datetime | None = None


class Outcome(NamedTuple):
    """What ``plan`` decided: the consent's new fields and when the change took effect."""

    state: State
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    occurred_at: datetime


def plan(
    action: Action,
    current: Current,
    purpose: PurposeInfo,
    *,
    now: datetime,
    as_of: datetime | None = None,
    imported: Current | None = None,
) -> Outcome:
    """Apply the rules to one consent. Raises ``TransitionNotAllowed`` with the reason.

    ``as_of`` is the instant an expiry is judged at (default ``now``); ``imported`` carries the
    state, version, given_at and valid_until of an imported record.
    """
    rule = RULES[action]
    if current.state not in rule.allowed:
        state = current.state.value if current.state else "absent"
        raise TransitionNotAllowed(f"consent is {state}: {rule.hint}")
    version = purpose.current_version
    if action is Action.GRANT:
        return Outcome(State.GIVEN, version, now, _validity(now, purpose), now)
    if action is Action.RENEW:
        # Renewing confirms the current notice and restarts its validity period.
        return Outcome(State.GIVEN, version, current.given_at, _validity(now, purpose), now)
    if action is Action.EXPIRE:
        # Judged as of ``as_of`` but never ahead of time: a consent expires once it has ended.
        as_of = min(as_of or now, now)
        if current.valid_until is None or current.valid_until > as_of:
            raise TransitionNotAllowed(
                f"consent is valid until {_fmt(current.valid_until)}: not due at {_fmt(as_of)}"
            )
        # It expired when its validity ended, whenever the sweep gets round to recording it.
        return Outcome(
            State.EXPIRED,
            current.purpose_version or version,
            current.given_at,
            current.valid_until,
            current.valid_until,
        )
    if action is Action.INVALIDATE:
        if (current.purpose_version or 0) >= purpose.material_version:
            raise TransitionNotAllowed(
                f"consent rests on version {current.purpose_version}, which no material "
                f"revision has superseded (latest material version {purpose.material_version})"
            )
        return Outcome(State.INVALIDATED, current.purpose_version or version, None, None, now)
    if action is Action.IMPORT:
        assert imported is not None and imported.state is not None
        # Without a grant date, an expired record counts from its end (never after it).
        fallback = imported.valid_until if imported.state is State.EXPIRED else None
        given_at = imported.given_at or fallback or now
        imp_version = imported.purpose_version or version
        if imported.state in (State.GIVEN, State.EXPIRED):
            valid_until = imported.valid_until or _validity(given_at, purpose)
            return Outcome(imported.state, imp_version, given_at, valid_until, given_at)
        return Outcome(imported.state, imp_version, None, None, given_at)
    assert rule.to is not None
    if action is Action.REVOKE:  # withdraws what was given, under the notice it was given on
        return Outcome(rule.to, current.purpose_version or version, None, None, now)
    # request, refuse: about the notice the subject is being asked about now
    return Outcome(rule.to, version, None, None, now)


def _validity(start: datetime, purpose: PurposeInfo) -> datetime:
    return start + timedelta(days=purpose.validity_days)


def _fmt(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "never"


# --------------------------------------------------------------------------------------------
# Who acts, and what a change reports
# --------------------------------------------------------------------------------------------


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "subject": self.external_id,
            "purpose": self.purpose,
            "purpose_version": self.purpose_version,
            "seq": self.seq,
            "action": self.action.value,
            "previous_state": self.previous_state.value if self.previous_state else None,
            "state": self.state.value,
            "occurred_at": self.occurred_at.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "deliveries": self.deliveries,
        }


# --------------------------------------------------------------------------------------------
# The single write path
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Subject:
    id: int
    external_id: str
    subject_ref: str
    last_seq: int


@dataclass(slots=True)
class _Item:
    subject: _Subject
    purpose: PurposeInfo
    consent_id: int | None
    previous: State | None
    outcome: Outcome
    action: Action
    actor: Actor
    seq: int = 0
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    deliveries: int = 0


def _lock_subjects(
    session: Session, *, ids: Iterable[int] | None = None, external_ids: Iterable[str] | None = None
) -> dict[int, _Subject]:
    """Lock subject rows (PostgreSQL; in id order, so two batches never deadlock)."""
    stmt = select(Subject.id, Subject.external_id, Subject.subject_ref, Subject.last_seq)
    if ids is not None:
        stmt = stmt.where(col(Subject.id).in_(sorted(set(ids))))
    if external_ids is not None:
        stmt = stmt.where(col(Subject.external_id).in_(sorted(set(external_ids))))
    rows = session.exec(stmt.order_by(col(Subject.id)).with_for_update()).all()
    return {r.id: _Subject(r.id, r.external_id, r.subject_ref, r.last_seq) for r in rows}


def _load_current(
    session: Session, subject_ids: Iterable[int]
) -> dict[tuple[int, int], tuple[int, Current]]:
    stmt = select(
        Consent.id,
        Consent.subject_id,
        Consent.purpose_id,
        Consent.state,
        Consent.purpose_version,
        Consent.given_at,
        Consent.valid_until,
    ).where(col(Consent.subject_id).in_(list(subject_ids)))
    return {
        (r.subject_id, r.purpose_id): (
            r.id,
            Current(State(r.state), r.purpose_version, r.given_at, r.valid_until),
        )
        for r in session.exec(stmt)
    }


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


def _write(
    session: Session,
    items: list[_Item],
    *,
    now: datetime,
    propagate: bool,
    preface: Sequence[audit.Entry] = (),
) -> list[Change]:
    """Write state, history, outbox and audit for ``items`` whose subjects are locked.

    Each step is one many-row statement for the whole batch (see ``db.Writer``). ``preface``
    entries join the audit chain just before the items' own (e.g. the subjects an import created).
    """
    if not items:
        audit.append(session, preface, now=now)
        return []
    w = Writer(session)
    ts, uid, now_db = w.ts, w.uuid, w.ts(now)

    # 1. Sequence numbers, per subject, strictly increasing.
    for item in items:
        item.subject.last_seq += 1
        item.seq = item.subject.last_seq
    subjects = {item.subject.id: item.subject for item in items}
    w.update("subject", _ID, [_SEQ], [(s.id, s.last_seq) for s in subjects.values()])

    # 2. Current state and history.
    existing, new = [], []
    # A consent changed twice in one batch (an ended consent expired, then given again) gets
    # one state write: the last.
    last = {(i.subject.id, i.purpose.id): i for i in items}
    for i in last.values():
        o = i.outcome
        row = (
            o.state.value,
            o.purpose_version,
            ts(o.given_at),
            ts(o.valid_until),
            now_db,
            uid(i.event_id),
            None,  # reminder_stage: the validity is new, or no longer counts
        )
        if i.consent_id:
            existing.append((i.consent_id, *row))
        else:
            new.append((*row, i.subject.id, i.purpose.id))
    w.update("consent", _ID, _STATE_COLUMNS, existing)
    w.insert("consent", _NEW_CONSENT_COLUMNS, new)
    w.insert(
        "consent_event",
        _EVENT_COLUMNS,
        [
            (
                uid(i.event_id),
                i.subject.id,
                i.purpose.id,
                i.seq,
                i.action.value,
                i.outcome.state.value,
                i.previous.value if i.previous else None,
                i.outcome.purpose_version,
                ts(i.outcome.occurred_at),
                now_db,
                ts(i.outcome.valid_until),
                i.actor.type.value,
                i.actor.name,
                i.actor.channel.value,
                i.actor.reason,
                orjson.dumps(i.actor.evidence).decode() if i.actor.evidence is not None else None,
                i.actor.run_id,
            )
            for i in items
        ],
    )

    # 3. Requests: opened by a request, answered by any answer from the subject.
    _track_requests(w, items, now_db)

    # 4. Outbox.
    if propagate:
        _enqueue(session, w, [i for i in items if i.outcome.state in WITHDRAWING_STATES], now)

    # 5. Audit, last.
    audit.append(
        session,
        chain(
            preface,
            (
                audit.Entry(
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
                    },
                )
                for i in items
            ),
        ),
        now=now,
    )
    return [
        Change(
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
        for i in items
    ]


_DELIVERY_COLUMNS = [
    Column(name, pg_type)
    for name, pg_type in (
        ("system_id", "bigint"), ("event_id", "uuid"), ("webhook_id", "text"),
        ("event_type", "text"), ("payload", "text"), ("state", "text"), ("attempts", "int"),
        ("next_attempt_at", "timestamptz"), ("created_at", "timestamptz"),
    )
]  # fmt: skip
_ANSWERS = frozenset({Action.GRANT, Action.REFUSE, Action.RENEW, Action.REVOKE})


def _track_requests(w: Writer, items: list[_Item], now_db: Any) -> None:
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


def webhook_payload(change: _Item, recorded_at: datetime) -> dict[str, Any]:
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


#: Where a session notes how many outbox rows its transaction wrote; ``delivery.events`` reads
#: it after commit to wake the delivery workers (the ledger itself knows nothing of Prefect).
OUTBOX_KEY = "consentflow.outbox_rows"


def note_outbox(session: Session, rows: int) -> None:
    """Record that this transaction enqueued ``rows`` deliveries."""
    session.info[OUTBOX_KEY] = session.info.get(OUTBOX_KEY, 0) + rows


def _enqueue(session: Session, w: Writer, items: list[_Item], now: datetime) -> None:
    """One pending delivery per withdrawing change and subscribed system with a webhook.

    Paused and disabled systems get their rows too: they are held, never skipped.
    """
    if not items:
        return
    purpose_ids = {i.purpose.id for i in items}
    subscribers: dict[int, list[int]] = {}
    stmt = (
        select(SystemPurpose.purpose_id, SystemPurpose.system_id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(SystemPurpose.purpose_id).in_(purpose_ids))
        .where(col(System.webhook_url).is_not(None))
    )
    for purpose_id, system_id in session.exec(stmt):
        subscribers.setdefault(purpose_id, []).append(system_id)
    if not subscribers:
        return
    now_db = w.ts(now)
    rows = []
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
                f"msg_{uuid.uuid4().hex}",
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


# --------------------------------------------------------------------------------------------
# Single changes
# --------------------------------------------------------------------------------------------


def _single(
    session: Session,
    action: Action,
    external_id: str,
    purpose_key: str,
    actor: Actor,
    *,
    now: datetime | None = None,
    as_of: datetime | None = None,
) -> Change:
    now = now or utcnow()
    purpose = purposes.get(session, purpose_key)
    locked = _lock_subjects(session, external_ids=[external_id])
    if not locked:
        raise NotFound(f"unknown subject {external_id!r}: add it with `consentflow subject add`")
    subject = next(iter(locked.values()))
    consent_id, current = _load_current(session, [subject.id]).get(
        (subject.id, purpose.id), (None, Current())
    )
    try:
        items = _items_for(action, subject, purpose, consent_id, current, actor, now, as_of)
    except TransitionNotAllowed as exc:
        raise TransitionNotAllowed(
            f"cannot {action.value} consent of {external_id!r} for {purpose_key!r}: {exc}"
        ) from None
    return _write(session, items, now=now, propagate=True)[-1]


def _items_for(
    action: Action,
    subject: _Subject,
    purpose: PurposeInfo,
    consent_id: int | None,
    current: Current,
    actor: Actor,
    now: datetime,
    as_of: datetime | None = None,
) -> list[_Item]:
    """What one requested change writes, judged by ``plan``.

    A given consent whose validity has ended is expired in fact, even if no sweep has recorded
    it yet (``access.check`` already says so). Its expiry is written first, effective at the
    validity end as the sweep would write it, and the action is judged from ``expired``: an
    ended consent cannot be renewed or revoked, only given again.
    """
    items = []
    ended = current.state is State.GIVEN and current.valid_until and current.valid_until <= now
    if ended and action is not Action.EXPIRE:
        lapse = plan(Action.EXPIRE, current, purpose, now=now)
        items.append(
            _Item(
                subject, purpose, consent_id, current.state, lapse, Action.EXPIRE,
                system_actor(actor.run_id),
            )
        )  # fmt: skip
        current = Current(State.EXPIRED, lapse.purpose_version, lapse.given_at, lapse.valid_until)
        try:
            outcome = plan(action, current, purpose, now=now, as_of=as_of)
        except TransitionNotAllowed as exc:
            raise TransitionNotAllowed(
                f"its validity ended {_fmt(lapse.valid_until)}; {exc}"
            ) from None
    else:
        outcome = plan(action, current, purpose, now=now, as_of=as_of)
    items.append(_Item(subject, purpose, consent_id, current.state, outcome, action, actor))
    return items


def request(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """Record that the subject was asked (state ``requested``, plus an open collection request)."""
    return _single(session, Action.REQUEST, external_id, purpose_key, actor)


def grant(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """The subject gives consent under the purpose's current notice; validity starts now."""
    return _single(session, Action.GRANT, external_id, purpose_key, actor)


def refuse(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """The subject says no to a request (or to being asked)."""
    return _single(session, Action.REFUSE, external_id, purpose_key, actor)


def revoke(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """The subject withdraws a given consent; subscribed systems are notified."""
    return _single(session, Action.REVOKE, external_id, purpose_key, actor)


def renew(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """The subject confirms a given consent under the current notice; validity restarts now."""
    return _single(session, Action.RENEW, external_id, purpose_key, actor)


def expire(
    session: Session, external_id: str, purpose_key: str, *, as_of: datetime | None = None
) -> Change:
    """Expire one consent whose validity ended by ``as_of``."""
    return _single(session, Action.EXPIRE, external_id, purpose_key, system_actor(), as_of=as_of)


def invalidate(session: Session, external_id: str, purpose_key: str, actor: Actor) -> Change:
    """Invalidate a consent resting on a notice version a material revision superseded."""
    return _single(session, Action.INVALIDATE, external_id, purpose_key, actor)


# --------------------------------------------------------------------------------------------
# Batch changes
# --------------------------------------------------------------------------------------------


_CLAIM_COLUMNS = (
    "c.id, c.subject_id, c.purpose_id, c.state, c.purpose_version, c.given_at, c.valid_until,"
    " s.external_id, s.subject_ref, s.last_seq"
)


def _claim(
    session: Session, w: Writer, where: str, params: list[Any], order: str, limit: int
) -> list[Any]:
    """Select up to ``limit`` consents matching ``where`` (on alias ``c``), with their subjects,
    fresh and locked for this transaction.

    SQLite: ``BEGIN IMMEDIATE`` already holds the database, so one read does it. PostgreSQL: lock
    the candidate consents and then their subjects with ``SKIP LOCKED`` (so concurrent workers
    take different items and never wait on each other), then read them again: only a statement
    started after the locks were taken is sure to see every change committed before them.
    """
    read = (
        f"SELECT {_CLAIM_COLUMNS} FROM consent c JOIN subject s ON s.id = c.subject_id"
        f" WHERE {where}"
    )
    if not w.pg:
        return w.fetch(f"{read} ORDER BY {order} LIMIT ?", [*params, limit])
    locked = w.fetch(
        "SELECT s.id FROM subject s WHERE s.id IN ("
        f" SELECT c.subject_id FROM consent c WHERE {where} ORDER BY {order} LIMIT ?"
        " FOR UPDATE SKIP LOCKED) ORDER BY s.id FOR UPDATE SKIP LOCKED",
        [*params, limit],
    )
    if not locked:
        return []
    return w.fetch(
        f"{read} AND c.subject_id = ANY(?) ORDER BY {order} LIMIT ?",
        [*params, [r[0] for r in locked], limit],
    )


def _batch(
    session: Session,
    action: Action,
    rows: list[Any],
    actor: Actor,
    w: Writer,
    *,
    now: datetime,
    as_of: datetime | None = None,
    infos: dict[int, PurposeInfo],
) -> list[Change]:
    """Apply ``action`` to claimed rows (see ``_claim``); rows the rules refuse are skipped."""
    subjects: dict[int, _Subject] = {}
    items = []
    for cid, sid, pid, state, version, given_at, valid_until, ext, ref, last_seq in rows:
        subject = subjects.get(sid)
        if subject is None:
            subject = subjects[sid] = _Subject(sid, ext, ref, last_seq)
        cur = Current(State(state), version, w.from_ts(given_at), w.from_ts(valid_until))
        try:
            items += _items_for(action, subject, infos[pid], cid, cur, actor, now, as_of)
        except TransitionNotAllowed:
            continue  # no longer due: changed after it was selected
    return _write(session, items, now=now, propagate=True)


def _in(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({','.join('?' * len(values))})"


def expire_due(
    session: Session,
    *,
    as_of: datetime | None = None,
    limit: int = 5000,
    purposes_: list[str] | None = None,
    actor: Actor | None = None,
) -> list[Change]:
    """Expire up to ``limit`` given consents whose validity ended by ``as_of``, in one batch.

    Call repeatedly (committing after each) until it returns nothing. Concurrent callers on
    PostgreSQL share the work: each skips the consents and subjects another holds.
    """
    now = utcnow()
    as_of = as_of or now
    infos = {i.id: i for i in purposes.info(session, purposes_).values()}
    w = Writer(session)
    where, params = "c.state = ? AND c.valid_until <= ?", [State.GIVEN.value, w.ts(as_of)]
    if purposes_ is not None:
        where += " AND " + _in("c.purpose_id", list(infos))
        params += list(infos)
    rows = _claim(session, w, where, params, "c.valid_until, c.id", limit)
    return _batch(
        session, Action.EXPIRE, rows, actor or system_actor(), w, now=now, as_of=as_of, infos=infos
    )


def invalidate_stale(
    session: Session,
    purpose_key: str,
    *,
    subject_ids: Sequence[int] | None = None,
    limit: int = 5000,
    actor: Actor | None = None,
) -> list[Change]:
    """Invalidate up to ``limit`` given consents resting on a version older than the latest
    material revision (optionally only for ``subject_ids``, e.g. those past a deadline)."""
    now = utcnow()
    info = purposes.get(session, purpose_key)
    w = Writer(session)
    where = "c.state = ? AND c.purpose_id = ? AND c.purpose_version < ?"
    params: list[Any] = [State.GIVEN.value, info.id, info.material_version]
    if subject_ids is not None:
        if not subject_ids:
            return []
        where += " AND " + _in("c.subject_id", subject_ids)
        params += list(subject_ids)
    rows = _claim(session, w, where, params, "c.id", limit)
    return _batch(
        session,
        Action.INVALIDATE,
        rows,
        actor or system_actor(),
        w,
        now=now,
        infos={info.id: info},
    )


@dataclass(frozen=True)
class ImportRow:
    """One consent to bring in from another platform (already validated)."""

    subject_id: int
    purpose_key: str
    state: State
    given_at: datetime | None = None
    valid_until: datetime | None = None


def import_consents(
    session: Session,
    rows: Sequence[ImportRow],
    actor: Actor,
    *,
    propagate: bool = False,
    preface: Sequence[audit.Entry] = (),
) -> list[Change]:
    """Write imported consents; a subject that already has a consent for the purpose is skipped,
    which makes re-running an import a no-op. Imports fire no webhooks unless ``propagate``.
    ``preface`` audit entries (the subjects the import created) are chained before the consents'.
    """
    now = utcnow()
    infos = purposes.info(session, sorted({r.purpose_key for r in rows}))
    subjects = _lock_subjects(session, ids=[r.subject_id for r in rows])
    current = _load_current(session, subjects)
    items = []
    for row in rows:
        info = infos[row.purpose_key]
        subject = subjects[row.subject_id]
        if (subject.id, info.id) in current:
            continue
        imported = Current(row.state, None, row.given_at, row.valid_until)
        outcome = plan(Action.IMPORT, Current(), info, now=now, imported=imported)
        items.append(_Item(subject, info, None, None, outcome, Action.IMPORT, actor))
        current[(subject.id, info.id)] = (0, Current(row.state))
    return _write(session, items, now=now, propagate=propagate, preface=preface)


# --------------------------------------------------------------------------------------------
# Reading: now, and as of any past instant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentView:
    """A subject's consent for one purpose, now or as of an instant."""

    purpose: str
    state: State
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    event_id: uuid.UUID
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "state": self.state.value,
            "purpose_version": self.purpose_version,
            "given_at": self.given_at.isoformat() if self.given_at else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "event_id": str(self.event_id),
            "seq": self.seq,
        }


def subject_id(session: Session, external_id: str) -> int:
    found = session.exec(select(Subject.id).where(Subject.external_id == external_id)).first()
    if found is None:
        raise NotFound(f"unknown subject {external_id!r}: add it with `consentflow subject add`")
    return found


def history(session: Session, external_id: str) -> list[tuple[str, ConsentEvent]]:
    """Every consent event of the subject, with its purpose key, in sequence order."""
    sid = subject_id(session, external_id)
    stmt = (
        select(Purpose.key, ConsentEvent)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .where(ConsentEvent.subject_id == sid)
        .order_by(col(ConsentEvent.seq))
    )
    return [(k, e) for k, e in session.exec(stmt).all()]


def replay(events: Iterable[tuple[str, ConsentEvent]]) -> dict[str, ConsentView]:
    """Fold a history into the consent state it implies, per purpose.

    The ``consent`` table must always equal the replay of ``consent_event``; the property tests
    check exactly that.
    """
    state: dict[str, ConsentView] = {}
    for key, e in events:
        prev = state.get(key)
        entering = e.state == State.GIVEN and (prev is None or prev.state != State.GIVEN)
        keeps_given_at = e.state in (State.GIVEN, State.EXPIRED)
        if e.action == Action.IMPORT:
            given_at = e.occurred_at if keeps_given_at else None
        elif entering:
            given_at = e.occurred_at
        else:
            given_at = prev.given_at if (prev and keeps_given_at) else None
        state[key] = ConsentView(
            key, State(e.state), e.purpose_version, given_at, e.valid_until, e.id, e.seq
        )
    return state


def current(session: Session, external_id: str) -> list[ConsentView]:
    """The subject's consents now, from the current-state table (one indexed read)."""
    sid = subject_id(session, external_id)
    stmt = (
        select(Purpose.key, Consent, ConsentEvent.seq)
        .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        .join(ConsentEvent, col(ConsentEvent.id) == Consent.last_event_id)
        .where(Consent.subject_id == sid)
        .order_by(col(Purpose.key))
    )
    return [
        ConsentView(
            key,
            State(c.state),
            c.purpose_version,
            c.given_at,
            c.valid_until,
            c.last_event_id,
            seq,
        )
        for key, c, seq in session.exec(stmt).all()
    ]


def as_of(session: Session, external_id: str, at: datetime) -> list[ConsentView]:
    """The subject's consents as they stood at ``at``, replayed from the history.

    Events count from when they took effect; a consent whose validity had ended by ``at`` is
    reported expired even if no sweep had recorded it yet.
    """
    events = [(k, e) for k, e in history(session, external_id) if e.occurred_at <= at]
    views = replay(events)
    return [
        replace(v, state=State.EXPIRED)
        if v.state == State.GIVEN and v.valid_until and v.valid_until <= at
        else v
        for _, v in sorted(views.items())
    ]

"""Finding a person, and everything the record holds about them (the workspace's People pages).

``search(session, q)`` recognises what was typed, one exact match each (never a fuzzy or prefix
search, so a query names people, it does not list them):

- an **email address** (anything with an ``@``): normalised by the one address rule
  (``addresses.normalise``: the domain lowercased, IDNA as Unicode, NFC) and compared with the
  stored address, as typed and with its local part lowercased (the form most addresses are
  stored in), through ``ix_subject_email``. Addresses are stored in clear only while the person
  is not erased; an erased person holds none, so no address finds them (their address is not
  kept in any form that maps to them). A value the rule refuses is ``InvalidInput`` naming
  ``q``.
- an **external id** (the identifier rule, ``subjects.check_external_id``): the subject
  registered under it now, and the tombstones of its earlier registrations that were erased,
  found through their references (``subjects.reference(key, id, generation)``: whoever holds
  the reference key can still find them, nobody can read the id back from them);
- a **subject reference** (32 hex digits, the pseudonym the audit trail, the logs and the
  exports use): the one subject with that reference, erased or not;
- an erased subject's tombstone (``~erased-...``), as lists and earlier answers show it.

A query may match as an id and as a reference at once (both are hex): every match is returned,
each saying how it matched. Nothing matches: ``NotFound("no such subject: ...")``, which never
repeats the query (it may be an address). A query that is none of these (blank, too long, a
character outside the identifier rule) is ``InvalidInput`` starting ``q:``.

``overview(session, subject)`` gathers, for one subject named by external id or tombstone, in a
handful of indexed reads (by ``subject.id`` or ``subject_ref``; nothing grows with the size of the
record but the person's own rows): the consents now per purpose with their validity (a lapsed
consent counts as expired, ``effective_state``, and a consent resting on an older notice than
the purpose's current one says so); the full history (who, channel, notice version, reason);
open requests; every delivery of their withdrawals and erasure per system (state, attempts,
when it was delivered); the audit entries about them (newest ``AUDIT_LIMIT``), each with a
verify result (``verify_entries``); and where their receipt is. An unknown subject is
``NotFound("no such subject '...'")``. Erased subjects are tombstones: no id, no address, no
receipt, their pseudonymous history intact; nothing here fails on them.

Read-only: safe in a read-only unit of work. Email addresses are never returned (``has_email``
only), as everywhere else the API shows a subject.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from consentflow import addresses, audit, subjects
from consentflow.erasure import TOMBSTONE
from consentflow.errors import InvalidInput, NotFound
from consentflow.keys import reference_key
from consentflow.ledger import effective_state
from consentflow.models import (
    AuditEntry,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    Purpose,
    RequestStatus,
    State,
    Subject,
    System,
    utcnow,
)

#: The longest query: an address's limit (RFC 5321), longer than any id or reference.
MAX_QUERY = addresses.MAX_LENGTH
#: How many of a subject's audit entries the overview shows (the newest).
AUDIT_LIMIT = 500
_REFERENCE = re.compile(r"^[0-9a-f]{32}$")
#: An erased subject's external id (``erasure.TOMBSTONE`` and random hex).
TOMBSTONE_PATTERN = r"^~erased-[0-9a-f]{1,64}$"
assert TOMBSTONE_PATTERN.startswith(f"^{TOMBSTONE}")
_TOMBSTONE = re.compile(TOMBSTONE_PATTERN)
#: Earlier registrations looked for at once (one query; more only if all of them exist).
_GENERATIONS = 8
NO_MATCH = "no such subject: nothing matches that external id, email address or subject reference"


@dataclass(frozen=True)
class Match:
    """One subject a query found, and how: ``external_id``, ``email`` or ``subject_ref``."""

    subject: Subject
    matched_by: str


def check_query(q: str) -> str:
    """The query trimmed, or ``InvalidInput`` (``q: ...``) for one that cannot name anybody."""
    q = q.strip()
    if not q:
        raise InvalidInput("q: give an external id, an email address or a subject reference")
    if len(q) > MAX_QUERY:
        raise InvalidInput(f"q: longer than {MAX_QUERY} characters")
    if any(not c.isprintable() for c in q):
        raise InvalidInput("q: it must be printable text on one line")
    return q


def search(session: Session, q: str) -> list[Match]:
    """The subjects ``q`` names (see the module docstring): current ones first, then erased."""
    q = check_query(q)
    if "@" in q:
        found = _by_email(session, q)
    elif _TOMBSTONE.match(q):
        found = [Match(s, "external_id") for s in _where(session, Subject.external_id == q)]
    else:
        try:
            external_id = subjects.check_external_id(q)
        except InvalidInput as exc:
            raise InvalidInput(
                f"q: not an external id, email address or subject reference ({exc})"
            ) from None
        found = _by_id_or_reference(session, external_id)
    if not found:
        raise NotFound(NO_MATCH)
    return sorted(found, key=lambda m: (m.subject.erased_at is not None, m.subject.id or 0))


def _where(session: Session, *clauses: Any) -> list[Subject]:
    return list(session.exec(select(Subject).where(*clauses).order_by(col(Subject.id))).all())


def _by_email(session: Session, q: str) -> list[Match]:
    try:
        stored = addresses.normalise(q)
    except InvalidInput as exc:
        raise InvalidInput(f"q: {exc}") from None
    local, _, domain = stored.rpartition("@")
    wanted = sorted({stored, f"{local.lower()}@{domain}"})
    return [Match(s, "email") for s in _where(session, col(Subject.email).in_(wanted))]


def _by_id_or_reference(session: Session, external_id: str) -> list[Match]:
    """The subject registered as ``external_id`` now, its erased earlier registrations (by
    their references), and the subject whose reference it is, if it looks like one."""
    secret = reference_key(session)
    is_ref = bool(_REFERENCE.match(external_id))
    found: dict[int, Match] = {}
    first = 1
    while True:
        refs = {
            subjects.reference(secret, external_id, g): g
            for g in range(first, first + _GENERATIONS)
        }
        clauses: list[Any] = [col(Subject.subject_ref).in_(list(refs))]
        if first == 1:
            clauses.append(Subject.external_id == external_id)
            if is_ref:
                clauses.append(Subject.subject_ref == external_id)
        rows = _where(session, or_(*clauses))
        for row in rows:
            how = "subject_ref" if row.subject_ref == external_id else "external_id"
            found.setdefault(row.id or 0, Match(row, how))
        # Every generation of this batch registered (and erased): look further (rare).
        if len(refs.keys() & {r.subject_ref for r in rows}) < _GENERATIONS:
            return list(found.values())
        first += _GENERATIONS


@dataclass(frozen=True)
class ConsentNow:
    """One purpose's consent now: its stored state and what it counts as at ``now``."""

    purpose: str
    state: str
    counts_as: str
    purpose_version: int
    current_version: int
    given_at: datetime | None
    valid_until: datetime | None
    updated_at: datetime
    event_id: uuid.UUID


@dataclass(frozen=True)
class EntryCheck:
    """An audit entry about the subject and what verifying it found."""

    entry: Any
    #: ``ok``, ``modified`` (its content does not match its hash) or ``unlinked`` (its
    #: ``prev_hash`` is not the hash of the entry before it: inserted, moved or that one edited).
    verified: str


@dataclass(frozen=True)
class Overview:
    """Everything ``overview`` gathers about one subject (rows as the queries return them)."""

    subject: Subject
    now: datetime
    consents: list[ConsentNow]
    history: list[Any]
    requests: list[Any]
    deliveries: list[Any]
    audit: list[EntryCheck]
    #: More audit entries exist than ``AUDIT_LIMIT`` (the oldest are left out).
    audit_truncated: bool
    #: Where the receipt is (the API's, which a signed-in browser may open); None when erased.
    receipt_url: str | None
    erased: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "erased", self.subject.erased_at is not None)


def resolve(session: Session, subject: str) -> Subject:
    """The subject named by external id (or an erased one's tombstone), or ``NotFound``."""
    found = session.exec(select(Subject).where(Subject.external_id == subject)).first()
    if found is None:
        raise NotFound(f"no such subject {subject!r}")
    return found


def overview(session: Session, subject: str, *, now: datetime | None = None) -> Overview:
    """The subject's page: see the module docstring."""
    now = now or utcnow()
    row = resolve(session, subject)
    sid = row.id
    assert sid is not None
    entries, truncated = _audit(session, row.subject_ref)
    erased = row.erased_at is not None
    return Overview(
        subject=row,
        now=now,
        consents=_consents(session, sid, now),
        history=_history(session, sid),
        requests=_open_requests(session, sid),
        deliveries=_deliveries(session, sid),
        audit=entries,
        audit_truncated=truncated,
        receipt_url=None if erased else f"/api/v1/subjects/{row.external_id}/receipt",
    )


def _consents(session: Session, sid: int, now: datetime) -> list[ConsentNow]:
    stmt = (
        select(Purpose.key, Purpose.current_version, Consent)
        .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        .where(Consent.subject_id == sid)
        .order_by(col(Purpose.key))
    )
    return [
        ConsentNow(
            purpose=key,
            state=c.state,
            counts_as=effective_state(State(c.state), c.valid_until, now).value,
            purpose_version=c.purpose_version,
            current_version=current,
            given_at=c.given_at,
            valid_until=c.valid_until,
            updated_at=c.updated_at,
            event_id=c.last_event_id,
        )
        for key, current, c in session.exec(stmt).all()
    ]


_HISTORY: list[Any] = [
    ConsentEvent.id.label("event_id"),  # type: ignore[attr-defined]
    ConsentEvent.seq,
    Purpose.key.label("purpose"),  # type: ignore[attr-defined]
    ConsentEvent.action,
    ConsentEvent.state,
    ConsentEvent.previous_state,
    ConsentEvent.purpose_version,
    ConsentEvent.occurred_at,
    ConsentEvent.recorded_at,
    ConsentEvent.valid_until,
    ConsentEvent.actor_type,
    ConsentEvent.actor,
    ConsentEvent.channel,
    ConsentEvent.reason,
    ConsentEvent.run_id,
]


def _history(session: Session, sid: int) -> list[Any]:
    """Every consent event, newest first (the subject's ``(subject_id, seq)`` index)."""
    stmt = (
        select(*_HISTORY)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .where(ConsentEvent.subject_id == sid)
        .order_by(col(ConsentEvent.seq).desc())
    )
    return list(session.exec(stmt).all())


def _open_requests(session: Session, sid: int) -> list[Any]:
    stmt = (
        select(ConsentRequest, Purpose.key)
        .join(Purpose, col(Purpose.id) == ConsentRequest.purpose_id)
        .where(
            ConsentRequest.subject_id == sid,
            ConsentRequest.status == RequestStatus.OPEN.value,
        )
        .order_by(col(ConsentRequest.requested_at), col(ConsentRequest.id))
    )
    return list(session.exec(stmt).all())


_DELIVERY: list[Any] = [
    Delivery.id,
    System.name.label("system"),  # type: ignore[attr-defined]
    Delivery.event_type,
    Delivery.event_id,
    Delivery.state,
    Delivery.attempts,
    Delivery.created_at,
    Delivery.next_attempt_at,
    Delivery.delivered_at,
    Delivery.last_status,
]


def _deliveries(session: Session, sid: int) -> list[Any]:
    """The outbox rows about the subject: one per withdrawing event and subscribed system
    (through their events, ``(subject_id, seq)`` then ``ix_delivery_event_id``), and their
    ``subject.erased`` webhooks; by system, then oldest first."""
    columns: list[Any] = [*_DELIVERY, ConsentEvent.seq, Purpose.key.label("purpose")]  # type: ignore[attr-defined]
    about_events = (
        select(*columns)
        .join(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .join(System, col(System.id) == Delivery.system_id)
        .where(ConsentEvent.subject_id == sid)
    )
    erasure = (
        select(*_DELIVERY)
        .join(System, col(System.id) == Delivery.system_id)
        .where(Delivery.erasure_subject_id == sid)
    )
    rows: list[Any] = [dict(r._mapping) for r in session.exec(about_events).all()]
    rows += [dict(r._mapping, seq=None, purpose=None) for r in session.exec(erasure).all()]
    return sorted(rows, key=lambda r: (r["system"], r["created_at"], r["id"]))


#: Every field ``audit.digest`` hashes, and the two hashes.
_AUDIT: list[Any] = [
    getattr(AuditEntry, n)
    for n in (
        "seq", "recorded_at", "action", "subject_ref", "purpose_key", "actor_type", "actor",
        "channel", "run_id", "detail", "prev_hash", "hash",
    )
]  # fmt: skip


def _audit(session: Session, ref: str) -> tuple[list[EntryCheck], bool]:
    """The newest ``AUDIT_LIMIT`` entries about ``ref`` (``ix_audit_entry_subject_ref``), oldest
    first, each verified."""
    stmt = (
        select(*_AUDIT)
        .where(AuditEntry.subject_ref == ref)
        .order_by(col(AuditEntry.seq).desc())
        .limit(AUDIT_LIMIT + 1)
    )
    rows = list(session.exec(stmt).all())
    truncated = len(rows) > AUDIT_LIMIT
    rows = rows[:AUDIT_LIMIT][::-1]
    return verify_entries(session, rows), truncated


def verify_entries(session: Session, rows: Sequence[Any]) -> list[EntryCheck]:
    """Each entry checked on its own, as ``audit verify`` checks it in the chain: its content
    must hash to its ``hash`` (``audit.digest`` over its ``prev_hash`` and fields), and its
    ``prev_hash`` must be the hash of the entry before it (the genesis for the first), read in
    one query by primary key. The whole chain and the record against it stay ``audit verify``'s
    (``integrity.check``): this says whether these entries are intact where they stand."""
    before = {r.seq - 1 for r in rows if r.seq > 1}
    prev: dict[int, str] = {0: audit.GENESIS}
    if before:
        stmt = select(AuditEntry.seq, AuditEntry.hash).where(col(AuditEntry.seq).in_(before))
        prev.update({seq: h for seq, h in session.exec(stmt).all()})
    out = []
    for r in rows:
        data = r._asdict()
        if audit.digest(r.prev_hash, data) != r.hash:
            verdict = "modified"
        elif prev.get(r.seq - 1) != r.prev_hash:
            verdict = "unlinked"
        else:
            verdict = "ok"
        out.append(EntryCheck(r, verdict))
    return out

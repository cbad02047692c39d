"""Batch changes: expiry, invalidation and import, many consents per transaction.

An import's new subjects are registered by ``create_subjects`` (one statement per batch, the
rows ``subjects.add`` writes); ``import_consents`` then writes their consents without locking
or reading them again (``created``).

They claim their consents (``_claim``: fresh, locked, shared among concurrent workers on
PostgreSQL), judge each with ``plan`` exactly as a single change would (``items_for``) and write
them all through the one write path (``ledger._write.write``), so a batch writes exactly the rows
the single forms would, in a handful of statements.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from consentflow import audit, purposes, subjects
from consentflow.actors import Actor, system_actor
from consentflow.db import Column, Writer
from consentflow.errors import TransitionNotAllowed
from consentflow.ledger._changes import items_for
from consentflow.ledger._rules import Current, plan
from consentflow.ledger._write import (
    Change,
    Item,
    LockedSubject,
    load_current,
    lock_subjects,
    write,
)
from consentflow.models import Action, State, utcnow
from consentflow.purposes import PurposeInfo

_CLAIM_COLUMNS = (
    "c.id, c.subject_id, c.purpose_id, c.state, c.purpose_version, c.given_at, c.valid_until,"
    " s.external_id, s.subject_ref, s.last_seq"
)


def _claim(w: Writer, where: str, params: list[Any], order: str, limit: int) -> list[Any]:
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


_STATES = {s.value: s for s in State}


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
    subjects: dict[int, LockedSubject] = {}
    items = []
    for cid, sid, pid, state, version, given_at, valid_until, ext, ref, last_seq in rows:
        subject = subjects.get(sid)
        if subject is None:
            subject = subjects[sid] = LockedSubject(sid, ext, ref, last_seq)
        cur = Current(_STATES[state], version, w.from_ts(given_at), w.from_ts(valid_until))
        try:
            items += items_for(action, subject, infos[pid], cid, cur, actor, now, as_of)
        except TransitionNotAllowed:
            continue  # no longer due: changed after it was selected
    return write(session, items, now=now, propagate=True)


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
    PostgreSQL share the work: each skips the consents and subjects another holds. (The SQL
    condition is ``effective_state``'s "lapsed" written for the index on state, valid_until.)
    """
    now = utcnow()
    as_of = as_of or now
    infos = {i.id: i for i in purposes.info(session, purposes_).values()}
    w = Writer(session)
    # lapsed = has_lapsed / effective_state (_rules.py), in SQL
    where, params = "c.state = ? AND c.valid_until <= ?", [State.GIVEN.value, w.ts(as_of)]
    if purposes_ is not None:
        where += " AND " + _in("c.purpose_id", list(infos))
        params += list(infos)
    rows = _claim(w, where, params, "c.valid_until, c.id", limit)
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
    rows = _claim(w, where, params, "c.id", limit)
    return _batch(
        session,
        Action.INVALIDATE,
        rows,
        actor or system_actor(),
        w,
        now=now,
        infos={info.id: info},
    )


@dataclass(frozen=True, slots=True)
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
    created: Sequence[tuple[int, str, str]] = (),
) -> list[Change]:
    """Write imported consents; a subject that already has a consent for the purpose is skipped,
    which makes re-running an import a no-op. Imports fire no webhooks unless ``propagate``.
    ``preface`` audit entries (the subjects the import created) are chained before the consents'.

    ``created``: (id, external id, reference) of subjects this transaction has just inserted
    (the bulk import's new subjects, ``last_seq`` 0): they hold no consent and no other
    transaction can see them yet, so they are neither locked nor read again. Their rows take
    the same path as every other (``write``).
    """
    now = utcnow()
    infos = purposes.info(session, sorted({r.purpose_key for r in rows}))
    fresh = {sid: LockedSubject(sid, ext, ref, 0) for sid, ext, ref in created}
    old = [r.subject_id for r in rows if r.subject_id not in fresh]
    subjects = lock_subjects(session, ids=old) if old else {}
    current = load_current(session, subjects) if subjects else {}
    subjects.update(fresh)
    items = []
    for row in rows:
        info = infos[row.purpose_key]
        subject = subjects[row.subject_id]
        if (subject.id, info.id) in current:
            continue
        imported = Current(row.state, None, row.given_at, row.valid_until)
        outcome = plan(Action.IMPORT, _ABSENT, info, now=now, imported=imported)
        items.append(Item(subject, info, None, None, outcome, Action.IMPORT, actor))
        current[(subject.id, info.id)] = (0, Current(row.state))
    return write(session, items, now=now, propagate=propagate, preface=preface)


_ABSENT = Current()

#: A new subject of an import: external id, email, locale (checked by the importer).
NewSubject = tuple[str, str | None, str | None]
_SUBJECT_COLUMNS = [
    Column(name, pg_type)
    for name, pg_type in (
        ("id", "bigint"), ("external_id", "text"), ("subject_ref", "text"),
        ("generation", "int"), ("email", "text"), ("locale", "text"), ("last_seq", "int"),
        ("created_at", "timestamptz"),
    )
]  # fmt: skip


def create_subjects(
    session: Session, new: Sequence[NewSubject], actor: Actor, secret: bytes
) -> tuple[list[tuple[int, str, str]], list[audit.Entry]]:
    """Register subjects an import brings (none of them registered now) in one statement: the
    rows ``subjects.add`` writes (the reference keyed with ``secret``, the reference key; the
    next generation for an id whose earlier registrations were erased), with ids drawn up
    front so nothing is read back. Returns (id, external id, reference) of each, for
    ``import_consents(created=...)``, and their ``subject.created`` audit entries, to be chained
    (``preface``) before their consents' entries."""
    w = Writer(session)
    references = _references(session, w, secret, [ext for ext, _, _ in new])
    now_db = w.ts(utcnow())
    rows, created, entries = [], [], []
    for sid, (ext, email, locale) in zip(w.new_ids("subject", len(new)), new, strict=True):
        ref, generation = references[ext]
        rows.append((sid, ext, ref, generation, email, locale, 0, now_db))
        created.append((sid, ext, ref))
        detail: dict[str, Any] = {"has_email": email is not None, "locale": locale}
        if generation > 1:
            detail["generation"] = generation
        entries.append(
            audit.Entry(
                action="subject.created",
                subject_ref=ref,
                actor_type=actor.type.value,
                actor=actor.name,
                channel=actor.channel.value,
                run_id=actor.run_id,
                detail=detail,
            )
        )
    w.insert("subject", _SUBJECT_COLUMNS, rows)
    return created, entries


def referencer(secret: bytes) -> Callable[[str], str]:
    """``keys.subject_ref(secret, ·)`` for many ids: the key's HMAC state is computed once."""
    keyed = hmac.new(secret, b"subject:", hashlib.sha256)

    def reference(external_id: str) -> str:
        h = keyed.copy()
        h.update(external_id.encode())
        return h.hexdigest()[:32]

    return reference


def _references(
    session: Session, w: Writer, secret: bytes, external_ids: list[str]
) -> dict[str, tuple[str, int]]:
    """``subjects.new_references`` for many ids: (reference, generation) of a new registration
    of each; one query unless some id was registered and erased before."""
    reference = referencer(secret)
    refs = {ext: reference(ext) for ext in external_ids}
    where, param = w.in_list("subject_ref", list(refs.values()))
    taken = {r[0] for r in w.fetch(f"SELECT subject_ref FROM subject WHERE {where}", [param])}
    out = {ext: (ref, 1) for ext, ref in refs.items()}
    again = [ext for ext, ref in refs.items() if ref in taken]
    if again:
        out |= subjects.new_references(session, secret, again)
    return out

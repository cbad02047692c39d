"""The transfer gate: which people's consent lets a system use their data for a purpose right now.

Before data leaves for a partner or a downstream system, the gate answers for many people at
once, with the same judgement as the access check (``access``): a subject is cleared when their
consent for the purpose is given and its validity has not ended (``ledger.effective_state``, the
one statement of "a lapsed given consent counts as expired", read at the instant of the answer,
so a consent whose validity passed but that the sweep has not yet recorded is not cleared). The
answers carry the access check's reason codes (``access.Reason``) and, per cleared subject, the
evidence it rests on: the consent event, the notice version, the end of validity.

Two shapes:

- ``check_batch``: up to ``MAX_BATCH`` given external ids, each answered (``access.Decision``),
  in the order asked (a repeated id is answered each time); unknown ids answer
  ``unknown_subject``, ids without a consent row ``no_consent``. A few set-based reads in one
  read-only unit of work.
- ``Export``: every cleared subject, streamed in keyset pages (``read_page``: the next
  ``PAGE_SIZE`` subjects after the last id read, with their consent for the purpose, in subject
  id order). Each page is read in
  a short read-only unit of work of its own and judged at the instant it is read, so a consent
  withdrawn during a long export is honoured for the pages not yet read; nothing is held
  between pages but the last subject id, a count and a running hash, so memory stays flat
  whatever the size and a slow reader never holds a connection or a transaction open.

Invariants:

- The gate opens only for a registered system (``gate``): an unknown system or purpose is
  ``NotFound`` (the request names something that does not exist); a system not registered for
  the purpose is ``Conflict`` naming the access check's reason code ``system_not_authorised``
  (a refusal, as the access check's "not allowed"): nothing is answered or sent, nothing
  written. Paused and disabled systems are answered like active ones, as by the access check
  (their status holds webhook deliveries, not consent).
- Every answer is audited: one hash-chained entry per batch check (``transfer.checked``,
  written before the answer is returned) and per export (``transfer.exported``, written when the
  export ends, ``Export.finish``), naming who asked, the purpose, the system, the count cleared
  and the SHA-256 of the cleared subjects' external ids, each followed by a newline, in the order
  answered (``sha256sum`` of the ids, one a line, gives the same). An export that ends early (the
  reader went away, the process was stopped) records the rows handed out before it ended and
  ``complete: false``. No email address is ever read or written here.

Failure modes: ``InvalidInput`` for a batch of no or more than ``MAX_BATCH`` ids (one line);
``NotFound`` / ``Conflict`` from ``gate`` as above. A database failure mid-export ends the
stream; ``finish`` still records what was handed out.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import ARRAY, String, and_, any_, literal
from sqlalchemy import select as rows_of
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from consentflow import audit, db, purposes, systems, views
from consentflow.access import Decision, Reason, judge
from consentflow.actors import Actor, audit_fields
from consentflow.errors import Conflict, InvalidInput
from consentflow.exports import AuditedExport
from consentflow.models import SystemPurpose, metadata, utcnow
from consentflow.timeutil import iso_z

#: The most subjects one batch check answers.
MAX_BATCH = 10_000
#: Consents read per page of an export.
PAGE_SIZE = 5_000
#: Ids per ``IN (...)`` list of a batch check (well under every driver's parameter limit).
_CHUNK = 2_000
_CONSENT = metadata.tables["consent"]
_SUBJECT = metadata.tables["subject"]
#: What a batch answer reads of a consent row (with the subject's external id before it).
_EVIDENCE = ("state", "purpose_version", "valid_until", "last_event_id")
CHECKED = "transfer.checked"
EXPORTED = "transfer.exported"


@dataclass(frozen=True)
class Gate:
    """A purpose and a system registered for it: the gate is open for this pair."""

    purpose: str
    system: str
    purpose_id: int
    system_id: int


@dataclass(frozen=True, slots=True)
class Eligible:
    """One cleared subject and the evidence its consent rests on. The fields, in this order, are
    an export's columns (``views.EligibleOut``, which ``views.eligible_jsonl`` writes them as)."""

    subject: str
    #: The consent event the answer rests on (the latest change of that consent).
    event_id: uuid.UUID
    purpose_version: int
    valid_until: datetime | None


@dataclass(frozen=True)
class BatchResult:
    """A batch check's answers, in the order asked, and its audit entry."""

    purpose: str
    system: str
    checked_at: datetime
    decisions: list[Decision]
    checked: int
    allowed: int
    sha256: str
    audit_seq: int


def gate(session: Session, purpose: str, system: str) -> Gate:
    """The gate for ``system`` and ``purpose``, if the system is registered for the purpose.

    ``NotFound`` for an unknown system or purpose, ``Conflict`` (``system_not_authorised``) for a
    system not registered for the purpose: one line each, saying why nothing is released.
    """
    found = systems.get(session, system)
    info = purposes.get(session, purpose)
    assert found.id is not None
    registered = session.exec(
        select(SystemPurpose.system_id).where(
            SystemPurpose.system_id == found.id, SystemPurpose.purpose_id == info.id
        )
    ).first()
    if registered is None:
        raise Conflict(
            f"system {system!r} is not registered for purpose {purpose!r} "
            f"({Reason.SYSTEM_NOT_AUTHORISED.value}): nothing is released; "
            "see `consentflow system list` for the purposes it is registered for"
        )
    return Gate(purpose=purpose, system=system, purpose_id=info.id, system_id=found.id)


def subjects_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the external ids, each followed by a newline (as ``sha256sum`` reads a file
    of them, one a line)."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def check_batch(
    purpose: str,
    system: str,
    subjects: Sequence[str],
    actor: Actor,
    *,
    engine: Engine | None = None,
    at: datetime | None = None,
) -> BatchResult:
    """Answer for each of ``subjects`` (1 to ``MAX_BATCH`` external ids), then audit the answer.

    Reads in one read-only unit of work, then appends the ``transfer.checked`` entry in a short
    write unit of its own; the answer exists only once its entry is committed.
    """
    if not 1 <= len(subjects) <= MAX_BATCH:
        raise InvalidInput(
            f"subjects: give 1 to {MAX_BATCH:,} subject ids in one batch (got {len(subjects):,})"
        )
    now = at or utcnow()
    with db.session_scope(engine, readonly=True) as session:
        opened = gate(session, purpose, system)
        rows = _batch_rows(session, opened, subjects)
    decisions = [_decide(opened, ext, rows, now) for ext in subjects]
    cleared = [d.subject for d in decisions if d.allowed]
    digest = subjects_digest(cleared)
    detail = {
        "system": system,
        "checked": len(subjects),
        "count": len(cleared),
        "sha256": digest,
        "as_of": iso_z(now),
    }
    with db.session_scope(engine) as session:
        seq = audit.record(
            session, CHECKED, purpose_key=purpose, detail=detail, **audit_fields(actor)
        )
    return BatchResult(
        purpose=purpose,
        system=system,
        checked_at=now,
        decisions=decisions,
        checked=len(subjects),
        allowed=len(cleared),
        sha256=digest,
        audit_seq=seq,
    )


_NO_CONSENT = object()


def _batch_rows(session: Session, opened: Gate, subjects: Sequence[str]) -> dict[str, Any]:
    """``{external_id: consent row tuple, or _NO_CONSENT}`` for the subjects that exist."""
    found: dict[str, Any] = {}
    wanted = sorted(set(subjects))
    on = and_(_CONSENT.c.subject_id == _SUBJECT.c.id, _CONSENT.c.purpose_id == opened.purpose_id)
    columns = (_SUBJECT.c.external_id, *(_CONSENT.c[name] for name in _EVIDENCE))
    conn = session.connection()  # Core rows: no ORM loading per row
    pg = conn.dialect.name == "postgresql"
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        # PostgreSQL: one array parameter (``= ANY``), not 2,000 bound values to render.
        ids = _SUBJECT.c.external_id
        match = ids == any_(literal(chunk, ARRAY(String))) if pg else ids.in_(chunk)
        stmt = rows_of(*columns).select_from(_SUBJECT.outerjoin(_CONSENT, on)).where(match)
        for ext, state, version, until, event in conn.execute(stmt):
            found[ext] = _NO_CONSENT if state is None else (state, version, until, event)
    return found


def _decide(opened: Gate, ext: str, rows: dict[str, Any], now: datetime) -> Decision:
    row = rows.get(ext)
    if row is None or row is _NO_CONSENT:
        reason = Reason.UNKNOWN_SUBJECT if row is None else Reason.NO_CONSENT
        return Decision(False, reason, ext, opened.purpose, opened.system, now)
    state, version, until, event = row
    reason = judge(state, until, now)
    return Decision(
        allowed=reason is Reason.GIVEN,
        reason=reason,
        subject=ext,
        purpose=opened.purpose,
        system=opened.system,
        checked_at=now,
        state=state,
        purpose_version=version,
        valid_until=until,
        event_id=event,
    )


def read_page(
    session: Session, opened: Gate, after: int, size: int = PAGE_SIZE
) -> tuple[list[Eligible], int, bool]:
    """One keyset page: the cleared subjects among the next ``size`` subjects after id
    ``after``, in id order, judged now (``judge``); with the last subject id read and whether
    more may follow.

    The subjects are read in id order and each joined to its consent for the purpose (if any)
    through the consent table's unique ``(subject_id, purpose_id)`` index, the consent side
    bounded by the same id: one plan on SQLite and PostgreSQL whatever their statistics say
    (left to themselves, SQLite's planner reads every given consent of the purpose through its
    ``(purpose_id, state, ...)`` index and sorts them, and PostgreSQL's merge join scans the
    consents from the first subject, on every page). Every row is judged in Python, so the
    export's rule is ``judge`` alone.
    """
    c, s = _CONSENT.c, _SUBJECT.c
    on = and_(c.subject_id == s.id, c.purpose_id == opened.purpose_id, c.subject_id > after)
    stmt = (
        rows_of(s.id, s.external_id, c.state, c.last_event_id, c.purpose_version, c.valid_until)
        .select_from(_SUBJECT.outerjoin(_CONSENT, on))
        .where(s.id > after)
        .order_by(s.id)
        .limit(size)
    )
    rows = session.connection().execute(stmt).all()  # Core rows: no ORM loading per row
    now, given = utcnow(), Reason.GIVEN
    page = [
        Eligible(ext, event, version, until)
        for _id, ext, state, event, version, until in rows
        if state is not None and judge(state, until, now) is given
    ]
    return page, (rows[-1][0] if rows else after), len(rows) == size


@dataclass(kw_only=True)
class Export(AuditedExport):
    """One streamed export through an open gate: iterate ``chunks()`` (or ``pages()``) once,
    then ``finish()`` (``exports.AuditedExport``: ``transfer.exported``).

    A page counts as handed out once the consumer asks for the next one, i.e. after it has dealt
    with it: a consumer that stops early records only what it took.
    """

    action: ClassVar[str] = EXPORTED
    opened: Gate
    #: Consents read per page (None: ``PAGE_SIZE``, read when the export starts).
    page_size: int | None = None
    pages_read: int = 0

    def pages(self) -> Generator[list[Eligible]]:
        after, more, size = 0, True, self.page_size or PAGE_SIZE
        while more:
            with db.session_scope(self.engine, readonly=True) as session:
                page, after, more = read_page(session, self.opened, after, size)
            self.pages_read += 1
            if page:
                yield page
                self.handed([row.subject for row in page])
        self.complete = True

    def chunks(self) -> Generator[bytes]:
        """The export's body: the CSV header (CSV only), then each page written at once."""
        csv = self.format == "csv"
        if csv:
            yield views.eligible_csv((), header=True)
        pages = self.pages()
        try:
            for page in pages:
                yield views.eligible_csv(page) if csv else views.eligible_jsonl(page)
        finally:
            pages.close()

    def detail(self) -> dict[str, Any]:
        return {"system": self.opened.system}

    @property
    def purpose_key(self) -> str | None:
        return self.opened.purpose


def open_export(
    purpose: str, system: str, actor: Actor, *, fmt: str = "jsonl", engine: Engine | None = None
) -> Export:
    """An export of everyone cleared, once the gate is open (``gate``'s errors otherwise)."""
    with db.session_scope(engine, readonly=True) as session:
        opened = gate(session, purpose, system)
    return Export(opened=opened, actor=actor, format=fmt, engine=engine)

"""Is the record still what it was? The audit chain, and the consent history against it.

``audit.verify`` proves the chain's own entries untouched. Every consent event has its entry
there (``consent.<action>``) carrying the event's id, sequence number, states, version and
times, so comparing the history with the chain, in chain order, finds an event edited, deleted
or added behind the ledger's back. ``check`` runs both: what ``consentflow audit verify`` and
``GET /api/v1/audit/verify`` report.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from consentflow import audit
from consentflow.models import AuditEntry, ConsentEvent, Purpose, Subject

#: What the history must agree with the audit chain on (plus who and which purpose).
_EVENT_FIELDS: list[Any] = [
    ConsentEvent.id,
    ConsentEvent.seq,
    ConsentEvent.previous_state,
    ConsentEvent.state,
    ConsentEvent.purpose_version,
    ConsentEvent.occurred_at,
    ConsentEvent.valid_until,
    ConsentEvent.action,
    Subject.subject_ref,
    Purpose.key,
]


def check(session: Session, *, expect: tuple[int, str] | None = None) -> dict[str, Any]:
    """The chain (and an anchor recorded earlier), then the history against it."""
    result = audit.verify(session, expect=expect)
    history_ok, history_problem = verify_history(session) if result.ok else (False, None)
    return {
        "ok": result.ok and history_ok,
        "entries": result.entries,
        "head": f"{result.head_seq}:{result.head_hash}",
        "first_bad": result.first_bad,
        "problem": result.problem,
        "history_ok": history_ok,
        "history_problem": history_problem,
    }


def verify_history(session: Session, *, chunk: int = 5000) -> tuple[bool, str | None]:
    """Check that the history says what the (hash-chained) audit trail says it said.

    The audit chain proves its own entries untouched (``audit.verify``); every consent event
    has one entry there (``consent.<action>``) carrying its id, sequence number, states,
    version and times. Comparing the two in chain order finds an event edited, deleted or
    added behind the ledger's back. Returns (ok, the first problem).
    """
    detail_cols = ("seq", "from", "to", "purpose_version", "occurred_at", "valid_until")
    last, seen = 0, 0
    while True:
        entries = session.exec(
            select(AuditEntry)
            .where(col(AuditEntry.seq) > last, col(AuditEntry.action).startswith("consent."))
            .order_by(col(AuditEntry.seq))
            .limit(chunk)
        ).all()
        if not entries:
            break
        last = entries[-1].seq
        ids = [uuid.UUID(e.detail["event_id"]) for e in entries]
        rows = {
            r.id: r
            for r in session.exec(
                select(*_EVENT_FIELDS)
                .join(Subject, col(Subject.id) == ConsentEvent.subject_id)
                .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
                .where(col(ConsentEvent.id).in_(ids))
            )
        }
        for entry, event_id in zip(entries, ids, strict=True):
            row = rows.get(event_id)
            if row is None:
                return False, f"event {event_id} (audit entry {entry.seq}) is missing (deleted)"
            d = entry.detail
            recorded = {
                "seq": row.seq,
                "from": row.previous_state,
                "to": row.state,
                "purpose_version": row.purpose_version,
                "occurred_at": _iso(row.occurred_at),
                "valid_until": _iso(row.valid_until),
            }
            audited = {k: d.get(k) for k in detail_cols}
            audited["occurred_at"] = _iso(_parse(d.get("occurred_at")))
            audited["valid_until"] = _iso(_parse(d.get("valid_until")))
            same = (
                recorded == audited
                and entry.action == f"consent.{row.action}"
                and entry.subject_ref == row.subject_ref
                and entry.purpose_key == row.key
            )
            if not same:
                return False, f"event {event_id} differs from audit entry {entry.seq} (modified)"
        seen += len(entries)
    total = session.exec(select(func.count()).select_from(ConsentEvent)).one()
    if total != seen:
        return False, f"{total - seen} event(s) have no audit entry (inserted)"
    return True, None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None

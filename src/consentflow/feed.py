"""The reconciliation feed: withdrawals a downstream system must honour, since a cursor.

Webhooks can fail for longer than any retry window; a system that polls this feed still
converges. The cursor is the audit chain's sequence number, which is assigned under the chain's
head lock at commit time, so it follows commit order: a reader that resumes from the last cursor
it saw can never skip a withdrawal that committed late (timestamps could).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from consentflow import systems
from consentflow.errors import InvalidInput
from consentflow.models import (
    WITHDRAWING_STATES,
    AuditEntry,
    Purpose,
    Subject,
    SystemPurpose,
    metadata,
)

#: Audit actions that withdraw permission (see ``lifecycle.WITHDRAWING_STATES``).
WITHDRAWAL_ACTIONS = ("consent.revoke", "consent.expire", "consent.invalidate")
_WITHDRAWN_STATES = sorted(s.value for s in WITHDRAWING_STATES)


@dataclass(frozen=True)
class FeedItem:
    cursor: int
    type: str
    subject: str
    purpose: str
    purpose_version: int
    state: str
    effective_at: str
    event_id: str
    sequence: int


_AUDIT = metadata.tables["audit_entry"]


def withdrawals_since(
    session: Session, system_name: str, cursor: int = 0, limit: int = 1000
) -> list[FeedItem]:
    """Up to ``limit`` withdrawals for the system's purposes after ``cursor``, oldest first.

    The payload mirrors the webhook body, so a receiver can use one handler for both.
    """
    if cursor < 0 or not 1 <= limit <= 10000:
        raise InvalidInput("the cursor must be >= 0 and the limit between 1 and 10000")
    system = systems.get(session, system_name)
    keys = (
        select(Purpose.key)
        .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
        .where(SystemPurpose.system_id == system.id)
    )
    stmt = (
        select(AuditEntry, Subject.external_id)
        .join(Subject, col(Subject.subject_ref) == AuditEntry.subject_ref)
        .where(
            col(AuditEntry.seq) > cursor,
            or_(
                col(AuditEntry.action).in_(WITHDRAWAL_ACTIONS),
                # A withdrawal brought in from another platform is one the system must honour
                # too, whether or not the import sent webhooks for it.
                and_(
                    col(AuditEntry.action) == "consent.import",
                    _AUDIT.c.detail["to"].as_string().in_(_WITHDRAWN_STATES),
                ),
            ),
            col(AuditEntry.purpose_key).in_(keys),
        )
        .order_by(col(AuditEntry.seq))
        .limit(limit)
    )
    items = []
    for entry, external_id in session.exec(stmt).all():
        d = entry.detail
        items.append(
            FeedItem(
                cursor=entry.seq,
                type=f"consent.{d['to']}",
                subject=external_id,
                purpose=entry.purpose_key or "",
                purpose_version=d["purpose_version"],
                state=d["to"],
                effective_at=d["occurred_at"].replace("+00:00", "Z"),
                event_id=d["event_id"],
                sequence=d["seq"],
            )
        )
    return items

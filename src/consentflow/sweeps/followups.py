"""Collection follow-ups: open collection requests unanswered for ``ctx.followup_after_days`` get
a follow-up email, up to ``ctx.followup_max``; after the last one (and the same wait again) the
request lapses.

A request whose subject cannot be emailed (no address, suppressed) lapses when its next follow-up
falls due, since no further follow-up can be sent. A lapsed request is closed (status ``lapsed``,
``closed_at``, one audit entry each) and counted for compliance; the consent itself stays
``requested``: nobody answered, so nothing was given or refused. Emails go through the claim
protocol (``claims``), exactly like reminders.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func
from sqlmodel import Session, col

from consentflow.links import LinkAction
from consentflow.mail import Kind, SendStatus
from consentflow.models import ConsentRequest, RequestKind, RequestStatus, utcnow
from consentflow.sweeps._batching import (
    Batch,
    audit_items,
    close_lapsed,
    due_rows,
    email_title,
    purpose_ids,
    transaction,
)
from consentflow.sweeps._context import SweepContext
from consentflow.sweeps.claims import (
    Claim,
    deliver,
    link,
    new_claim,
    suppression,
    write_claims,
)


def followup_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Follow up, or lapse, the due collection requests among the next ``size`` after
    ``cursor``."""
    now = utcnow()
    batch = Batch()
    claims: list[Claim] = []
    lapses: list[tuple[Any, str]] = []
    cr = ConsentRequest
    due = and_(
        col(cr.kind) == RequestKind.COLLECTION.value,
        col(cr.status) == RequestStatus.OPEN.value,
        func.coalesce(cr.last_sent_at, cr.requested_at)
        <= ctx.as_of - timedelta(days=ctx.followup_after_days),
    )
    with transaction(ctx.engine, ctx.dry_run) as s:
        infos = purpose_ids(s, ctx.purpose_keys)
        rows = due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.subject_id, cr.purpose_id, cr.requested_at, cr.followups_sent],
            cursor=cursor,
            size=size,
            dry_run=ctx.dry_run,
            purpose_ids=None if ctx.purposes is None else list(infos),
            title_version=cr.purpose_version,
        )
        suppressed = suppression(s, rows)
        for r in rows:
            why = _lapse_reason(r, ctx.followup_max, suppressed)
            if why is not None:
                lapses.append((r, why))
            elif ctx.dry_run:
                batch.add(r.key, SendStatus.SENT.value)
            else:
                claims.append(_claim(s, r, ctx.followup_max))
        for r, _ in lapses:
            batch.add(r.key, "lapsed")
        if not ctx.dry_run:
            write_claims(s, claims, run_id=ctx.run_id, now=now)
            _lapse(s, lapses, now, ctx.run_id)
    return deliver(ctx, claims, batch)


def _lapse_reason(r: Any, max_followups: int, suppressed: Any) -> str | None:
    """Why a due request lapses instead of getting a follow-up (None: follow it up)."""
    if r.followups_sent >= max_followups:
        return f"no answer after {r.followups_sent} follow-up(s)"
    if not r.email:
        return "no email address to follow up"
    if suppressed(r.email):
        return "email address suppressed"
    return None


def _claim(session: Session, r: Any, max_followups: int) -> Claim:
    number = r.followups_sent + 1
    return new_claim(
        Kind.COLLECTION_FOLLOWUP,
        r,
        stage=number,
        request_id=r.id,
        context={
            "purpose_title": email_title(r),
            "requested_on": r.requested_at,
            "grant_url": link(session, LinkAction.GRANT, r.subject_id, r.purpose_id),
            "preferences_url": link(session, LinkAction.PREFERENCES, r.subject_id, None),
            "withdraw_all_url": link(session, LinkAction.REVOKE, r.subject_id, None),
            "last": number >= max_followups,
        },
    )


def _lapse(
    session: Session,
    items: list[tuple[Any, str]],
    now: datetime,
    run_id: str | None,
) -> None:
    """Close collection requests as lapsed, one audit entry each (written last)."""
    if not items:
        return
    close_lapsed(session, [r.id for r, _ in items], now)
    audit_items(
        session,
        [
            (
                "request.lapsed",
                r.subject_ref,
                r.key,
                {
                    "request_id": r.id,
                    "kind": RequestKind.COLLECTION.value,
                    "requested_at": r.requested_at.isoformat(),
                    "followups_sent": r.followups_sent,
                    "reason": why,
                },
            )
            for r, why in items
        ],
        run_id,
    )

"""Renewal reminders: staged emails before a consent's validity ends (``ctx.stages`` days).

Each stage is sent at most once per validity period; when a missed run leaves several stages due
at once, only the nearest is sent. The email carries a renew link and a revoke link (also the
RFC 8058 one-click unsubscribe). Renewing restarts the validity and resets the stages. Emails go
through the claim protocol (``claims``): concurrent or repeated runs never send one twice.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_
from sqlmodel import Session, col

from consentflow import links
from consentflow.links import LinkAction
from consentflow.mail import Kind
from consentflow.models import Consent, State, utcnow
from consentflow.sweeps._batching import Batch, due_rows, email_title, purpose_ids, transaction
from consentflow.sweeps._context import SweepContext
from consentflow.sweeps.claims import (
    Claim,
    deliver,
    link,
    mailable,
    new_claim,
    write_claims,
)


def _reminder_due(as_of: datetime, stages: tuple[int, ...]) -> tuple[Any, Any]:
    """(condition, nearest stage): a given consent whose validity ends within the largest stage
    and that has not yet had the nearest stage due (or a nearer one). Only the nearest due stage
    is sent, so a run that missed earlier stages sends one reminder, not several."""
    nearest = case(
        *[(col(Consent.valid_until) <= as_of + timedelta(days=d), d) for d in stages],
        else_=None,
    )
    due = and_(
        # still in force: not ledger.has_lapsed (effective_state, ledger/_rules.py), in SQL
        col(Consent.state) == State.GIVEN.value,
        col(Consent.valid_until) > as_of,
        col(Consent.valid_until) <= as_of + timedelta(days=stages[-1]),
        or_(col(Consent.reminder_stage).is_(None), col(Consent.reminder_stage) > nearest),
    )
    return due, nearest


def remind_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Send the due renewal reminders among the next ``size`` consents after ``cursor``."""
    now = utcnow()
    batch = Batch()
    with transaction(ctx.engine, ctx.dry_run) as s:
        infos = purpose_ids(s, ctx.purpose_keys)
        due, nearest = _reminder_due(ctx.as_of, ctx.reminder_stages)
        rows = due_rows(
            s,
            batch,
            Consent,
            due,
            [
                Consent.id,
                Consent.subject_id,
                Consent.purpose_id,
                Consent.valid_until,
                nearest.label("stage"),
            ],
            cursor=cursor,
            size=size,
            dry_run=ctx.dry_run,
            purpose_ids=None if ctx.purposes is None else list(infos),
            title_version=Consent.purpose_version,
        )
        found = mailable(s, batch, rows, ctx.dry_run)
        # the renew links are bound to each consent's latest choice: read them in one query
        choices = links.latest_choices(s, [(r.subject_id, r.purpose_id) for r in found])
        claims = [_claim(s, r, ctx.as_of, choices) for r in found]
        write_claims(s, claims, run_id=ctx.run_id, now=now)
    return deliver(ctx, claims, batch)


def _claim(session: Session, r: Any, as_of: datetime, choices: dict[tuple[int, int], int]) -> Claim:
    revoke_url = link(session, LinkAction.REVOKE, r.subject_id, r.purpose_id)
    return new_claim(
        Kind.RENEWAL_REMINDER,
        r,
        stage=r.stage,
        unsubscribe_url=revoke_url,
        context={
            "purpose_title": email_title(r),
            "valid_until": r.valid_until,
            "days_left": max(1, math.ceil((r.valid_until - as_of) / timedelta(days=1))),
            "renew_url": link(
                session,
                LinkAction.RENEW,
                r.subject_id,
                r.purpose_id,
                choice=choices.get((r.subject_id, r.purpose_id), 0),
            ),
            "revoke_url": revoke_url,
            "preferences_url": link(session, LinkAction.PREFERENCES, r.subject_id, None),
            "withdraw_all_url": link(session, LinkAction.REVOKE, r.subject_id, None),
        },
    )

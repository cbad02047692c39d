"""How a claim moves its item (step 1 of the claim protocol in ``claims``), and how that move is
undone when the email was not sent.

A claim *advances* its item so that it is no longer due: a reminder sets
``Consent.reminder_stage`` to its stage, a follow-up sets ``ConsentRequest.followups_sent`` to its
number and ``last_sent_at`` to now, a re-consent request sets ``last_sent_at``.

*Undoing* never restores a remembered value: it recomputes the item's position from the messages
actually sent (or bounced, or failed for good: ``USED``), so that several claims undone in any
order, or a claim undone after a later one succeeded, leave the right answer. Each undo is
guarded by the value its claim set, so an item that changed since (renewed, answered, claimed
anew) is left alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, or_, select
from sqlmodel import Session

from consentflow.mail import Kind, SendStatus
from consentflow.models import Consent, ConsentEvent, ConsentRequest, EmailMessage, RequestStatus
from consentflow.sweeps._batching import table


class ClaimKey(NamedTuple):
    """What identifies a claimed item and the value its claim set (``stage``: the reminder stage
    or the follow-up number; None for a re-consent request)."""

    kind: Kind
    subject_id: int
    purpose_id: int
    request_id: int | None
    stage: int | None


def advance_claims(session: Session, claims: list[ClaimKey], now: datetime) -> None:
    """Advance each claimed item so that it is no longer due (``undo_claims`` reverses it)."""
    reminders = [c for c in claims if c.kind is Kind.RENEWAL_REMINDER]
    if reminders:
        ct = table(Consent)
        session.execute(
            ct.update()
            .where(ct.c.subject_id == bindparam("b_sid"), ct.c.purpose_id == bindparam("b_pid"))
            .values(reminder_stage=bindparam("b_stage")),
            [{"b_sid": c.subject_id, "b_pid": c.purpose_id, "b_stage": c.stage} for c in reminders],
        )
    rt = table(ConsentRequest)
    followups = [c for c in claims if c.kind is Kind.COLLECTION_FOLLOWUP]
    if followups:
        session.execute(
            rt.update()
            .where(rt.c.id == bindparam("b_rid"))
            .values(followups_sent=bindparam("b_n"), last_sent_at=now),
            [{"b_rid": c.request_id, "b_n": c.stage} for c in followups],
        )
    reconsents = [c for c in claims if c.kind is Kind.RECONSENT_REQUEST]
    if reconsents:
        session.execute(
            rt.update()
            .where(rt.c.id.in_([c.request_id for c in reconsents]))
            .values(last_sent_at=now)
        )


def undo_claims(session: Session, items: list[ClaimKey]) -> None:
    """Make claimed-but-unsent items due again, recomputed from the messages actually sent."""
    _undo_reminders(session, [c for c in items if c.kind is Kind.RENEWAL_REMINDER])
    _undo_followups(session, [c for c in items if c.kind is Kind.COLLECTION_FOLLOWUP])
    _undo_reconsents(session, [c for c in items if c.kind is Kind.RECONSENT_REQUEST])


#: Outcomes that use up the item's claim: the server took (or refused) the message, or it
#: failed for good (``failed``: not retried, see ``consentflow.mail.sending``).
USED = (SendStatus.SENT.value, SendStatus.BOUNCED.value, SendStatus.FAILED.value)


def _used() -> Any:
    """Messages that count as sent when an item's position is recomputed (``USED``)."""
    status = table(EmailMessage).c.status
    return or_(*(status == value for value in USED))  # not IN: these run as executemany


def _undo_reminders(session: Session, items: list[ClaimKey]) -> None:
    """A consent's stage becomes the smallest stage sent in its current validity period, which
    began with the consent's latest event (for a given consent: its grant, renewal or import)."""
    if not items:
        return
    mt, ct, et = table(EmailMessage), table(Consent), table(ConsentEvent)
    period_start = (
        select(et.c.recorded_at)
        .where(et.c.id == ct.c.last_event_id)
        .correlate(ct)
        .scalar_subquery()
    )
    smallest_sent = (
        select(func.min(mt.c.stage))
        .where(
            mt.c.subject_id == ct.c.subject_id,
            mt.c.purpose_id == ct.c.purpose_id,
            mt.c.kind == Kind.RENEWAL_REMINDER.value,
            _used(),
            mt.c.created_at >= period_start,
        )
        .correlate(ct)
        .scalar_subquery()
    )
    session.execute(
        ct.update()
        .where(
            ct.c.subject_id == bindparam("b_sid"),
            ct.c.purpose_id == bindparam("b_pid"),
            ct.c.reminder_stage == bindparam("b_stage"),
        )
        .values(reminder_stage=smallest_sent),
        [{"b_sid": c.subject_id, "b_pid": c.purpose_id, "b_stage": c.stage} for c in items],
    )


def _undo_followups(session: Session, items: list[ClaimKey]) -> None:
    """An open request's follow-up count and last sending, recounted from its sent follow-ups."""
    if not items:
        return
    mt, rt = table(EmailMessage), table(ConsentRequest)
    mine = and_(mt.c.request_id == rt.c.id, mt.c.kind == Kind.COLLECTION_FOLLOWUP.value, _used())
    session.execute(
        rt.update()
        .where(
            rt.c.id == bindparam("b_rid"),
            rt.c.status == RequestStatus.OPEN.value,
            rt.c.followups_sent == bindparam("b_n"),
        )
        .values(
            followups_sent=select(func.count()).where(mine).correlate(rt).scalar_subquery(),
            last_sent_at=select(func.max(mt.c.created_at))
            .where(mine)
            .correlate(rt)
            .scalar_subquery(),
        ),
        [{"b_rid": c.request_id, "b_n": c.stage} for c in items],
    )


def _undo_reconsents(session: Session, items: list[ClaimKey]) -> None:
    """An open re-consent request's last sending, from its sent requests (None: none sent)."""
    if not items:
        return
    mt, rt = table(EmailMessage), table(ConsentRequest)
    mine = and_(mt.c.request_id == rt.c.id, mt.c.kind == Kind.RECONSENT_REQUEST.value, _used())
    session.execute(
        rt.update()
        .where(rt.c.id == bindparam("b_rid"), rt.c.status == RequestStatus.OPEN.value)
        .values(
            last_sent_at=select(func.max(mt.c.created_at))
            .where(mine)
            .correlate(rt)
            .scalar_subquery()
        ),
        [{"b_rid": c.request_id} for c in items],
    )

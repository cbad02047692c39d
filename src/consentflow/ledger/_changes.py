"""Single changes: one subject, one purpose, one action, judged by ``plan`` and written by
``write`` (the rule book is ``ledger._rules``, the write path ``ledger._write``).

A given consent whose validity has ended is expired in fact (``effective_state``), even if no
sweep has recorded it yet: its expiry is written first, effective at the validity end as the
sweep would write it, and the action is judged from ``expired``. So an ended consent cannot be
renewed or revoked, only given again.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from consentflow import purposes, subjects
from consentflow.actors import Actor, system_actor
from consentflow.errors import TransitionNotAllowed
from consentflow.ledger._rules import Current, has_lapsed, plan
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
from consentflow.timeutil import iso_seconds


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
    """Apply ``action`` to one consent, in the caller's transaction (``NotFound`` for an unknown
    subject or purpose, ``TransitionNotAllowed`` naming the consent and the reason)."""
    now = now or utcnow()
    purpose = purposes.get(session, purpose_key)
    locked = lock_subjects(session, external_ids=[external_id])
    if not locked:
        raise subjects.unknown(external_id)
    subject = next(iter(locked.values()))
    consent_id, current = load_current(session, [subject.id]).get(
        (subject.id, purpose.id), (None, Current())
    )
    try:
        items = items_for(action, subject, purpose, consent_id, current, actor, now, as_of)
    except TransitionNotAllowed as exc:
        raise TransitionNotAllowed(
            f"cannot {action.value} consent of {external_id!r} for {purpose_key!r}: {exc}"
        ) from None
    return write(session, items, now=now, propagate=True)[-1]


def items_for(
    action: Action,
    subject: LockedSubject,
    purpose: PurposeInfo,
    consent_id: int | None,
    current: Current,
    actor: Actor,
    now: datetime,
    as_of: datetime | None = None,
) -> list[Item]:
    """What one requested change writes, judged by ``plan`` (a lapsed consent's expiry first)."""
    items = []
    if has_lapsed(current.state, current.valid_until, now) and action is not Action.EXPIRE:
        lapse = plan(Action.EXPIRE, current, purpose, now=now)
        items.append(
            Item(
                subject, purpose, consent_id, current.state, lapse, Action.EXPIRE,
                system_actor(actor.run_id),
            )
        )  # fmt: skip
        current = Current(State.EXPIRED, lapse.purpose_version, lapse.given_at, lapse.valid_until)
        try:
            outcome = plan(action, current, purpose, now=now, as_of=as_of)
        except TransitionNotAllowed as exc:
            raise TransitionNotAllowed(
                f"its validity ended {iso_seconds(lapse.valid_until)}; {exc}"
            ) from None
    else:
        outcome = plan(action, current, purpose, now=now, as_of=as_of)
    items.append(Item(subject, purpose, consent_id, current.state, outcome, action, actor))
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

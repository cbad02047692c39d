"""What operators do with deliveries and endpoints: list, replay, redeliver, pause, rotate.

Every change here is audited and none ever deletes a delivery. An operation that makes deliveries
due (replay, redeliver, resume or enable an endpoint) notes it for the commit (``note_outbox``), so
whichever door asked, the commit wakes ``propagate`` (``delivery.events``).

A replayed delivery keeps its ``webhook-id`` (receivers deduplicate on it) and its body; it starts
a fresh retry schedule (``attempts`` restarts at 0; the earlier attempts stay in
``delivery_attempt``) and keeps its first ``delivered_at``, which is when the system first learnt
of the withdrawal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, update
from sqlmodel import Session, col, select

from consentflow import audit, datakeys, secretbox, subjects, systems
from consentflow.actors import check_reason
from consentflow.errors import ConsentflowError, InvalidInput, NotFound
from consentflow.ledger import note_outbox
from consentflow.models import (
    ActorType,
    Channel,
    ConsentEvent,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Purpose,
    System,
    SystemStatus,
    utcnow,
)


@dataclass(frozen=True)
class DeliveryView:
    """One delivery as both doors show it (``views.DeliveryOut``)."""

    id: int
    system: str
    webhook_id: str
    event_type: str
    event_id: str | None
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    #: Pending, but its system is paused or disabled.
    held: bool
    #: The purpose the withdrawal concerns (its consent event's); None for a ``subject.erased``
    #: delivery, which is about a person, not one consent event.
    purpose: str | None


@dataclass(frozen=True)
class DeliveryDetailView(DeliveryView):
    """One delivery with its body and every attempt, in the order they were made
    (``views.DeliveryDetail``)."""

    payload: str = ""
    attempts_log: tuple[DeliveryAttempt, ...] = ()


def _state(value: str | None) -> str | None:
    if value is None:
        return None
    allowed = [s.value for s in DeliveryState] + ["held"]
    if value not in allowed:
        raise InvalidInput(f"bad state {value!r}: choose one of {', '.join(allowed)}")
    return value


def _views() -> Any:
    """Deliveries with their system's name and status and their event's purpose key."""
    return (
        select(Delivery, System.name, System.status, Purpose.key)
        .join(System, col(System.id) == Delivery.system_id)
        .outerjoin(ConsentEvent, col(ConsentEvent.id) == Delivery.event_id)
        .outerjoin(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
    )


def _view(d: Delivery, name: str, status: str, purpose: str | None) -> DeliveryView:
    return DeliveryView(
        id=d.id or 0,
        system=name,
        webhook_id=d.webhook_id,
        event_type=d.event_type,
        event_id=str(d.event_id) if d.event_id else None,
        state=d.state,
        attempts=d.attempts,
        created_at=d.created_at,
        next_attempt_at=d.next_attempt_at,
        delivered_at=d.delivered_at,
        last_status=d.last_status,
        last_error=d.last_error,
        held=d.state == DeliveryState.PENDING.value and status != SystemStatus.ACTIVE.value,
        purpose=purpose,
    )


def _event_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(
            f"bad event id {value!r}: expected a UUID (the event_id of a delivery or webhook)"
        ) from None


def deliveries_page(
    session: Session,
    *,
    state: str | None = None,
    system: str | None = None,
    subject: str | None = None,
    event: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> tuple[list[DeliveryView], bool]:
    """Deliveries after id ``after``, oldest first (the one order of both doors), and whether
    there are more (continue with the last one's id as ``after``).

    ``state`` may also be ``held`` (pending, system not active). ``system`` and ``subject`` must
    exist (``NotFound``); ``subject`` (an external id) keeps the deliveries about that person's
    consent events and ``event`` those of one consent event: with ``delivered_at``, when each
    system learnt of it.
    """
    state = _state(state)
    if not 1 <= limit <= 100000:
        raise InvalidInput("the limit must be between 1 and 100000")
    if after < 0:
        raise InvalidInput("after must be 0 or more")
    stmt = _views().where(col(Delivery.id) > after)
    if state == "held":
        stmt = stmt.where(
            col(Delivery.state) == DeliveryState.PENDING.value,
            col(System.status) != SystemStatus.ACTIVE.value,
        )
    elif state is not None:
        stmt = stmt.where(col(Delivery.state) == state)
    if system is not None:
        stmt = stmt.where(col(System.id) == systems.get(session, system).id)
    if subject is not None:
        person = subjects.require(session, subject)
        stmt = stmt.where(col(ConsentEvent.subject_id) == person.id)
    if event is not None:
        stmt = stmt.where(col(Delivery.event_id) == _event_id(event))
    rows = session.exec(stmt.order_by(col(Delivery.id)).limit(limit + 1)).all()
    return [_view(*row) for row in rows[:limit]], len(rows) > limit


def attempts(session: Session, delivery_id: int) -> list[DeliveryAttempt]:
    """Every attempt of one delivery, in the order they were made (a replay restarts the
    attempt numbers, so the order is the row id's)."""
    return list(
        session.exec(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(col(DeliveryAttempt.id))
        ).all()
    )


def _find(session: Session, delivery_id: int) -> tuple[Delivery, str, str, str | None]:
    found = session.exec(_views().where(col(Delivery.id) == delivery_id)).first()
    if found is None:
        raise NotFound(f"unknown delivery {delivery_id}")
    delivery, name, status, purpose = found
    return delivery, name, status, purpose


def detail(session: Session, delivery_id: int) -> DeliveryDetailView:
    """One delivery with its body and every attempt (``NotFound`` if there is no such one)."""
    found = _find(session, delivery_id)
    view = _view(*found)
    return DeliveryDetailView(
        **{f: getattr(view, f) for f in DeliveryView.__dataclass_fields__},
        payload=found[0].payload,
        attempts_log=tuple(attempts(session, delivery_id)),
    )


def _audit(session: Session, action: str, actor: str | None, detail: dict[str, Any]) -> None:
    audit.record(
        session,
        action,
        actor_type=ActorType.AGENT.value,
        actor=actor,
        channel=Channel.SUPPORT.value,
        detail=detail,
    )


_RESTART = {
    "state": DeliveryState.PENDING.value,
    "attempts": 0,
    "leased_until": None,
}


def replay(
    session: Session, delivery_id: int, *, actor: str | None = None, now: datetime | None = None
) -> DeliveryView:
    """Send one delivery again as soon as possible (any state), same webhook-id, fresh schedule."""
    now = now or utcnow()
    row = session.get(Delivery, delivery_id)
    if row is None:
        raise NotFound(f"unknown delivery {delivery_id}")
    datakeys.require_readable(session, row.payload)  # a shredded body can never be sent
    before = row.state
    session.execute(
        update(Delivery)
        .where(col(Delivery.id) == delivery_id)
        .values(**_RESTART, next_attempt_at=now)
    )
    session.execute(
        update(System)
        .where(col(System.id) == row.system_id)
        .values(revision=col(System.revision) + 1)
    )
    system = session.get(System, row.system_id)
    assert system is not None
    _audit(
        session,
        "delivery.replay",
        actor,
        {
            "delivery_id": delivery_id,
            "webhook_id": row.webhook_id,
            "system": system.name,
            "from": before,
        },
    )
    session.refresh(row)
    note_outbox(session, 1)
    return list_one(session, delivery_id)


def list_one(session: Session, delivery_id: int) -> DeliveryView:
    """One delivery (``NotFound`` if there is no such one)."""
    return _view(*_find(session, delivery_id))


def redeliver_since(
    session: Session,
    since: datetime,
    *,
    system: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> int:
    """Restart every undelivered delivery that failed at or after ``since``: dead-lettered ones
    and those still waiting for a retry. Returns how many; they are due at once."""
    now = now or utcnow()
    failed_since = exists().where(
        col(DeliveryAttempt.delivery_id) == Delivery.id,
        col(DeliveryAttempt.started_at) >= since,
        (col(DeliveryAttempt.status_code).is_(None))
        | (col(DeliveryAttempt.status_code) < 200)
        | (col(DeliveryAttempt.status_code) >= 300),
    )
    where = [
        col(Delivery.state).in_([DeliveryState.DEAD.value, DeliveryState.PENDING.value]),
        col(Delivery.attempts) > 0,
        failed_since,
    ]
    detail: dict[str, Any] = {"since": since.isoformat()}
    if system is not None:
        where.append(col(Delivery.system_id) == systems.get(session, system).id)
        detail["system"] = system
    result: Any = session.execute(
        update(Delivery).where(*where).values(**_RESTART, next_attempt_at=now)
    )
    n: int = result.rowcount
    detail["count"] = n
    _audit(session, "delivery.redeliver", actor, detail)
    if n:
        note_outbox(session, n)
    return n


# ------------------------------------------------------------------------------- endpoints


_TRANSITIONS = {
    "pause": ({SystemStatus.ACTIVE}, SystemStatus.PAUSED),
    "resume": ({SystemStatus.PAUSED}, SystemStatus.ACTIVE),
    "disable": ({SystemStatus.ACTIVE, SystemStatus.PAUSED}, SystemStatus.DISABLED),
    "enable": ({SystemStatus.DISABLED, SystemStatus.PAUSED}, SystemStatus.ACTIVE),
}


_ACTIONS = {
    "pause": "system.paused",
    "resume": "system.resumed",
    "disable": "system.disabled",
    "enable": "system.enabled",
}


def set_status(
    session: Session,
    name: str,
    verb: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> tuple[System, int]:
    """Pause, resume, disable or enable an endpoint. Pausing and disabling hold its deliveries
    (nothing is discarded); resuming and enabling make every held delivery due at once, because
    the operator says the endpoint works again. Returns the system and its pending count."""
    allowed, target = _TRANSITIONS[verb]
    now = now or utcnow()
    system = systems.get(session, name)
    current = SystemStatus(system.status)
    if current == target:
        raise ConsentflowError(f"system {name!r} is {current.value} already")
    if current not in allowed:
        hint = "enable it" if current == SystemStatus.DISABLED else f"it is {current.value}"
        raise ConsentflowError(f"cannot {verb} system {name!r}: {hint}")
    if reason is not None:
        check_reason(reason)
    status_reason = None if target == SystemStatus.ACTIVE else (reason or f"{verb}d by operator")
    session.execute(
        update(System)
        .where(col(System.id) == system.id)
        .values(
            status=target.value,
            status_reason=status_reason,
            revision=col(System.revision) + 1,
        )
    )
    pending_where = (
        col(Delivery.system_id) == system.id,
        col(Delivery.state) == DeliveryState.PENDING.value,
    )
    if target == SystemStatus.ACTIVE:
        session.execute(
            update(Delivery)
            .where(*pending_where, col(Delivery.next_attempt_at) > now)
            .values(next_attempt_at=now)
        )
    pending = session.exec(select(func.count()).where(*pending_where)).one()
    _audit(
        session,
        _ACTIONS[verb],
        actor,
        {
            "system": name,
            "from": current.value,
            "to": target.value,
            "reason": reason,
            "pending": pending,
        },
    )
    session.refresh(system)
    if target == SystemStatus.ACTIVE and pending:
        note_outbox(session, pending)
    return system, pending


def rotate_secret(
    session: Session,
    name: str,
    *,
    grace: timedelta = timedelta(hours=24),
    actor: str | None = None,
    now: datetime | None = None,
) -> str:
    """A new webhook secret for ``name``, returned once (stored encrypted, ``secretbox``). For
    ``grace`` the old one keeps signing alongside it (two signatures, new first), so the receiver
    can switch at leisure."""
    now = now or utcnow()
    if grace < timedelta(0) or grace > timedelta(days=30):
        raise InvalidInput("the grace period must be between 0 and 720 hours")
    system = systems.get(session, name)
    if not system.webhook_secret:
        raise ConsentflowError(f"system {name!r} has no webhook, so no secret to rotate")
    secret = systems.new_secret()
    keep_old = grace > timedelta(0)
    box = secretbox.Box.of(session)
    old = system.webhook_secret
    if keep_old and not secretbox.is_sealed(old):
        old = box.seal(old)  # a plain value from before encryption: store it encrypted now
    session.execute(
        update(System)
        .where(col(System.id) == system.id)
        .values(
            webhook_secret=box.seal(secret),
            previous_secret=old if keep_old else None,
            previous_secret_until=now + grace if keep_old else None,
        )
    )
    _audit(
        session,
        "system.secret_rotated",
        actor,
        {"system": name, "old_secret_valid_until": (now + grace).isoformat() if keep_old else None},
    )
    return secret

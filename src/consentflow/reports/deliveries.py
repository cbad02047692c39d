"""Deliveries (the webhook outbox): the API's paged list and one delivery with its attempts, and
the dashboard's delivery-health table.

Health itself is the delivery engine's per-endpoint aggregate (``consentflow.delivery.health``);
reports sit beside ``delivery`` in the layers and do not import it, so the caller passes the
health rows in (anything shaped like ``HealthRow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sqlmodel import Session, col, select

from consentflow.models import Delivery, DeliveryAttempt, DeliveryState, System
from consentflow.reports._table import Table


class HealthRow(Protocol):
    """What the health table shows of one endpoint (``delivery.health.EndpointHealth``)."""

    @property
    def system(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def status_reason(self) -> str | None: ...
    @property
    def pending(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def retrying(self) -> int: ...
    @property
    def dead(self) -> int: ...
    @property
    def failures_24h(self) -> int: ...
    @property
    def oldest_undelivered_age_s(self) -> float | None: ...
    @property
    def last_success_at(self) -> datetime | None: ...


def deliveries_page(
    session: Session,
    *,
    system: str | None = None,
    state: DeliveryState | None = None,
    after: int = 0,
    limit: int = 100,
) -> tuple[list[tuple[Delivery, str]], bool]:
    """Deliveries after id ``after``, oldest first, with their system's name; and whether there
    are more."""
    stmt = (
        select(Delivery, System.name)
        .join(System, col(System.id) == Delivery.system_id)
        .where(col(Delivery.id) > after)
    )
    if system is not None:
        stmt = stmt.where(System.name == system)
    if state is not None:
        stmt = stmt.where(Delivery.state == state.value)
    rows = session.exec(stmt.order_by(col(Delivery.id)).limit(limit + 1)).all()
    return [(d, name) for d, name in rows[:limit]], len(rows) > limit


def delivery_detail(
    session: Session, delivery_id: int
) -> tuple[Delivery, str, list[DeliveryAttempt]] | None:
    """One delivery, its system's name and its attempts in order; None if there is no such one."""
    row = session.exec(
        select(Delivery, System.name)
        .join(System, col(System.id) == Delivery.system_id)
        .where(Delivery.id == delivery_id)
    ).first()
    if row is None:
        return None
    delivery, name = row
    attempts = session.exec(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == delivery_id)
        .order_by(col(DeliveryAttempt.attempt))
    ).all()
    return delivery, name, list(attempts)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def delivery(health: Sequence[HealthRow]) -> Table:
    """Per downstream system: is every withdrawal getting through? (The delivery engine's own
    per-endpoint health, itself a few grouped queries.)"""
    table = Table(
        "delivery",
        "Delivery health per downstream system",
        [
            "system",
            "status",
            "pending",
            "held",
            "oldest undelivered",
            "retrying",
            "failures (24h)",
            "dead",
            "last success",
            "status reason",
        ],
        note="Pending: withdrawals not yet delivered (held: waiting for a paused or disabled "
        "system). Retrying: pending after a failed attempt. Dead: retries exhausted, kept for "
        "replay.",
    )
    for h in health:
        table.rows.append(
            [
                h.system,
                h.status,
                h.pending,
                h.held,
                age(h.oldest_undelivered_age_s),
                h.retrying,
                h.failures_24h,
                h.dead,
                h.last_success_at,
                h.status_reason,
            ]
        )
    return table

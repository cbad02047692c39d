"""Per-endpoint health: what the dashboard and ``consentflow deliveries health`` show.

For each system with a webhook: its status (and why), pending deliveries (and how many of them
are held), dead letters, the age of the oldest withdrawal it has not yet received, its last
success, and failed attempts over the last 24 hours. A handful of grouped queries, whatever the
number of deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from consentflow.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    System,
    SystemStatus,
    utcnow,
)
from consentflow.timeutil import as_utc


@dataclass(frozen=True)
class EndpointHealth:
    system: str
    status: str
    status_reason: str | None
    pending: int
    held: int
    retrying: int
    dead: int
    delivered: int
    oldest_undelivered_at: datetime | None
    oldest_undelivered_age_s: int | None
    last_success_at: datetime | None
    failures_24h: int

    @property
    def ok(self) -> bool:
        return self.status == SystemStatus.ACTIVE.value and not self.dead and not self.retrying


def endpoint_health(session: Session, *, now: datetime | None = None) -> list[EndpointHealth]:
    """Health of every system that has a webhook, by name."""
    now = now or utcnow()
    pending = col(Delivery.state) == DeliveryState.PENDING.value
    counts: dict[int, dict[str, Any]] = {}
    columns: list[Any] = [
        Delivery.system_id,
        func.count().filter(pending),
        func.count().filter(and_(pending, col(Delivery.attempts) > 0)),
        func.count().filter(col(Delivery.state) == DeliveryState.DEAD.value),
        func.count().filter(col(Delivery.state) == DeliveryState.DELIVERED.value),
        func.min(Delivery.created_at).filter(
            or_(pending, col(Delivery.state) == DeliveryState.DEAD.value),
            col(Delivery.delivered_at).is_(None),
        ),
    ]
    stmt = select(*columns).group_by(col(Delivery.system_id))
    for sid, n_pending, retrying, dead, delivered, oldest in session.exec(stmt).all():
        counts[sid] = {
            "pending": n_pending,
            "retrying": retrying,
            "dead": dead,
            "delivered": delivered,
            "oldest": _aware(oldest),
        }
    since = now - timedelta(hours=24)
    failures = dict(
        session.exec(
            select(Delivery.system_id, func.count())
            .join(DeliveryAttempt, col(DeliveryAttempt.delivery_id) == Delivery.id)
            .where(
                col(DeliveryAttempt.started_at) >= since,
                or_(
                    col(DeliveryAttempt.status_code).is_(None),
                    col(DeliveryAttempt.status_code) < 200,
                    col(DeliveryAttempt.status_code) >= 300,
                ),
            )
            .group_by(col(Delivery.system_id))
        ).all()
    )
    out = []
    rows = session.exec(
        select(System).where(col(System.webhook_url).is_not(None)).order_by(col(System.name))
    ).all()
    for system in rows:
        c = counts.get(system.id or 0, {})
        oldest = c.get("oldest")
        active = system.status == SystemStatus.ACTIVE.value
        out.append(
            EndpointHealth(
                system=system.name,
                status=system.status,
                status_reason=system.status_reason,
                pending=c.get("pending", 0),
                held=0 if active else c.get("pending", 0),
                retrying=c.get("retrying", 0),
                dead=c.get("dead", 0),
                delivered=c.get("delivered", 0),
                oldest_undelivered_at=oldest,
                oldest_undelivered_age_s=max(0, int((now - oldest).total_seconds()))
                if oldest
                else None,
                last_success_at=system.last_success_at,
                failures_24h=failures.get(system.id or 0, 0),
            )
        )
    return out


def _aware(value: Any) -> datetime | None:
    """Aggregates bypass the column type on SQLite (a naive string comes back): make it UTC."""
    return as_utc(value)

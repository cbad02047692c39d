"""Per-endpoint health: what the dashboard, ``consentflow deliveries health`` and
``GET /api/v1/deliveries/health`` show, judged once.

For each system with a webhook: its status (and why), pending deliveries (and how many of them
are held), dead letters, the age of the oldest withdrawal it has not yet received, its last
success, and failed attempts over the last 24 hours. A handful of grouped queries, whatever the
number of deliveries.

The verdict (``judge``) is the one judgement of every door: the dashboard colours it, the CLI
prints it and the API returns it, so a system that fails every request is never "active" on one
and "NOT OK" on another. A system's ``condition`` is the worst of what is happening, in this order:

- ``never succeeded``: attempts were made and not one was answered 2xx (critical);
- ``failing``: the latest attempt in the last 24 hours failed, after its last success (critical);
- ``dead letters``: deliveries whose retries are exhausted, kept for replay (critical);
- ``held``: the system is paused or disabled, its deliveries wait (warning);
- ``old undelivered``: a withdrawal has waited more than ``STALE_AFTER`` (warning);
- ``healthy``: none of these (ok). ``problems`` lists every one found, worst first.

Failure modes: none of its own; it only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
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

#: A withdrawal undelivered for longer than this makes its system "old undelivered".
STALE_AFTER = timedelta(hours=1)


class Condition(StrEnum):
    """What is happening at a system, worst first."""

    NEVER_SUCCEEDED = "never succeeded"
    FAILING = "failing"
    DEAD_LETTERS = "dead letters"
    HELD = "held"
    OLD_UNDELIVERED = "old undelivered"
    HEALTHY = "healthy"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    OK = "ok"


SEVERITY = {
    Condition.NEVER_SUCCEEDED: Severity.CRITICAL,
    Condition.FAILING: Severity.CRITICAL,
    Condition.DEAD_LETTERS: Severity.CRITICAL,
    Condition.HELD: Severity.WARNING,
    Condition.OLD_UNDELIVERED: Severity.WARNING,
    Condition.HEALTHY: Severity.OK,
}


@dataclass(frozen=True)
class Verdict:
    condition: Condition
    severity: Severity
    #: Every condition found, worst first, each with its figures ("3 dead letters").
    problems: tuple[str, ...]


def judge(
    *,
    status: str,
    attempted: int,
    delivered: int,
    last_success_at: datetime | None,
    last_failure_at: datetime | None,
    dead: int,
    held: int,
    oldest_undelivered_age_s: int | None,
    status_reason: str | None = None,
) -> Verdict:
    """The one judgement of a system's delivery health (see the module docstring)."""
    found: list[tuple[Condition, str]] = []
    if attempted and not delivered and last_success_at is None:
        found.append((Condition.NEVER_SUCCEEDED, f"{attempted} attempts, none answered 2xx"))
    elif last_failure_at is not None and (
        last_success_at is None or last_failure_at > last_success_at
    ):
        found.append((Condition.FAILING, "the latest attempt failed"))
    if dead:
        found.append((Condition.DEAD_LETTERS, f"{dead} dead letters"))
    if status != SystemStatus.ACTIVE.value:
        why = f": {status_reason}" if status_reason else ""
        found.append((Condition.HELD, f"{status}{why}; {held} deliveries held"))
    if oldest_undelivered_age_s is not None and oldest_undelivered_age_s > (
        STALE_AFTER.total_seconds()
    ):
        hours = oldest_undelivered_age_s // 3600
        found.append((Condition.OLD_UNDELIVERED, f"oldest undelivered {hours}h old"))
    if not found:
        return Verdict(Condition.HEALTHY, Severity.OK, ())
    worst = found[0][0]
    return Verdict(worst, SEVERITY[worst], tuple(text for _, text in found))


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
    #: The verdict of ``judge``: the worst condition, its severity and every problem found.
    condition: str = Condition.HEALTHY.value
    severity: str = Severity.OK.value
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing wrong: the verdict is ``healthy``."""
        return self.condition == Condition.HEALTHY.value


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
        func.coalesce(func.sum(Delivery.attempts), 0),
        func.min(Delivery.created_at).filter(
            or_(pending, col(Delivery.state) == DeliveryState.DEAD.value),
            col(Delivery.delivered_at).is_(None),
        ),
    ]
    stmt = select(*columns).group_by(col(Delivery.system_id))
    for sid, n_pending, retrying, dead, delivered, attempted, oldest in session.exec(stmt).all():
        counts[sid] = {
            "pending": n_pending,
            "retrying": retrying,
            "dead": dead,
            "delivered": delivered,
            "attempted": int(attempted or 0),
            "oldest": _aware(oldest),
        }
    failures = _failures(session, now - timedelta(hours=24))
    out = []
    rows = session.exec(
        select(System).where(col(System.webhook_url).is_not(None)).order_by(col(System.name))
    ).all()
    for system in rows:
        c = counts.get(system.id or 0, {})
        oldest = c.get("oldest")
        active = system.status == SystemStatus.ACTIVE.value
        held = 0 if active else c.get("pending", 0)
        age = max(0, int((now - oldest).total_seconds())) if oldest else None
        n_failures, last_failure = failures.get(system.id or 0, (0, None))
        verdict = judge(
            status=system.status,
            attempted=c.get("attempted", 0),
            delivered=c.get("delivered", 0),
            last_success_at=system.last_success_at,
            last_failure_at=last_failure,
            dead=c.get("dead", 0),
            held=held,
            oldest_undelivered_age_s=age,
            status_reason=system.status_reason,
        )
        out.append(
            EndpointHealth(
                system=system.name,
                status=system.status,
                status_reason=system.status_reason,
                pending=c.get("pending", 0),
                held=held,
                retrying=c.get("retrying", 0),
                dead=c.get("dead", 0),
                delivered=c.get("delivered", 0),
                oldest_undelivered_at=oldest,
                oldest_undelivered_age_s=age,
                last_success_at=system.last_success_at,
                failures_24h=n_failures,
                condition=verdict.condition.value,
                severity=verdict.severity.value,
                problems=verdict.problems,
            )
        )
    return out


def _failures(session: Session, since: datetime) -> dict[int, tuple[int, datetime | None]]:
    """Per system id: failed attempts since ``since`` and when the latest of them started."""
    return {
        sid: (int(n), _aware(last))
        for sid, n, last in session.exec(
            select(Delivery.system_id, func.count(), func.max(DeliveryAttempt.started_at))
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
    }


def _aware(value: Any) -> datetime | None:
    """Aggregates bypass the column type on SQLite (a naive string comes back): make it UTC."""
    return as_utc(value)

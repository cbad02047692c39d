"""The dashboard's delivery-health table. (The list of deliveries and one delivery with its
attempts are the delivery engine's own queries, ``delivery.ops``, shown by both doors.)

Health itself is the delivery engine's per-endpoint aggregate (``consentflow.delivery.health``);
reports sit beside ``delivery`` in the layers and do not import it, so the caller passes the
health rows in (anything shaped like ``HealthRow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from consentflow.reports._links import lists
from consentflow.reports._table import Flag, Table


class HealthRow(Protocol):
    """What the health table shows of one endpoint (``delivery.health.EndpointHealth``)."""

    @property
    def system(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def condition(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def problems(self) -> tuple[str, ...]: ...
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
    """Per downstream system: is every withdrawal getting through? The verdict is the delivery
    engine's own (``delivery.health.judge``, as the CLI and the API say it); the figures are its
    per-endpoint health, itself a few grouped queries. Pending and dead link to those deliveries."""
    table = Table(
        "delivery",
        "Delivery health per downstream system",
        [
            "system",
            "health",
            "status",
            "pending",
            "held",
            "oldest undelivered",
            "retrying",
            "failures (24h)",
            "dead",
            "last success",
            "problems",
        ],
        note="Health: never succeeded, failing (the latest attempt failed), dead letters, held "
        "(paused or disabled), old undelivered (waiting over an hour), or healthy; the same "
        "verdict as 'consentflow deliveries health'. Pending: withdrawals not yet delivered "
        "(held: waiting for a paused or disabled system). Retrying: pending after a failed "
        "attempt. Dead: retries exhausted, kept for replay.",
    )
    for i, h in enumerate(health):
        table.rows.append(
            [
                h.system,
                Flag(h.condition, h.severity),
                h.status,
                h.pending,
                h.held,
                age(h.oldest_undelivered_age_s),
                h.retrying,
                h.failures_24h,
                h.dead,
                h.last_success_at,
                "; ".join(h.problems) or None,
            ]
        )
        if h.pending:
            table.link(i, "pending", lists("deliveries", system=h.system, status="undelivered"))
        if h.dead:
            table.link(i, "dead", lists("deliveries", system=h.system, status="dead"))
    return table

"""The compliance dashboard's figures, assembled: every table, the trend chart and the tiles.

Aggregate SQL only: no consent, event or request row is ever loaded into Python to be counted, so
the dashboard costs the same few queries with a thousand consents or a million. Each table is a
``Table``, so the page and the CSV export render the very same figures.

Delivery health is the delivery engine's aggregate; reports do not import ``delivery``, so the
caller passes a ``health`` function (the web app passes ``web.delivery_ops.health``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from consentflow.models import utcnow
from consentflow.reports._sql import STATES
from consentflow.reports._table import Chart, Table
from consentflow.reports.consents import anomalies, event_days, expiring, states, trend
from consentflow.reports.deliveries import HealthRow, delivery
from consentflow.reports.requests import pending_requests, reconsent
from consentflow.reports.runs import recent_runs, runs

#: Where the delivery health comes from: ``session -> rows`` (``web.delivery_ops.health``).
HealthSource = Callable[[Session], Sequence[HealthRow]]


@dataclass
class Dashboard:
    generated_at: datetime
    tables: dict[str, Table]
    chart: Chart
    tiles: list[tuple[str, Any, str]]


TABLES: dict[str, Callable[[Session, datetime, HealthSource], list[Table]]] = {
    "states": lambda s, now, h: [states(s, now)],
    "trend": lambda s, now, h: [trend(s, now)[0]],
    "pending": lambda s, now, h: [pending_requests(s, now)],
    "reconsent": lambda s, now, h: [reconsent(s, now)[0]],
    "reconsent_deadlines": lambda s, now, h: [reconsent(s, now)[1]],
    "expiring": lambda s, now, h: [expiring(s, now)],
    "delivery": lambda s, now, h: [delivery(h(s))],
    "anomalies": lambda s, now, h: [anomalies(s, now)],
    "runs": lambda s, now, h: [runs(s)],
    "recent_runs": lambda s, now, h: [recent_runs(s)],
}


def table(
    session: Session, name: str, now: datetime | None = None, *, health: HealthSource
) -> Table | None:
    """One table by name (for the CSV export), or None if there is no such table."""
    build_one = TABLES.get(name)
    return build_one(session, now or utcnow(), health)[0] if build_one else None


def build(session: Session, now: datetime | None = None, *, health: HealthSource) -> Dashboard:
    """Every table, the 90-day chart and the headline tiles."""
    now = now or utcnow()
    days_rows = event_days(session, now)
    trend_table, chart = trend(session, now, days_rows)
    cohort, deadlines = reconsent(session, now)
    tables = [
        states(session, now),
        trend_table,
        pending_requests(session, now),
        cohort,
        deadlines,
        expiring(session, now),
        delivery(health(session)),
        anomalies(session, now, days_rows),
        runs(session),
        recent_runs(session),
    ]
    by_name = {t.name: t for t in tables}
    return Dashboard(now, by_name, chart, _tiles(by_name))


def _tiles(by_name: dict[str, Table]) -> list[tuple[str, Any, str]]:
    overall = by_name["states"].rows[-1]
    health = by_name["delivery"].rows
    last30 = sum(row[2] for row in by_name["trend"].rows[-30:])
    return [
        ("given", overall[1 + STATES.index("given")], "consents in force"),
        ("withdrawals", last30, "withdrawals in the last 30 days"),
        ("expiring", by_name["expiring"].rows[-1][-1], "expire in the next 30 days"),
        ("pending deliveries", sum(r[2] for r in health), "withdrawals not yet delivered"),
        ("dead", sum(r[7] for r in health), "dead deliveries awaiting replay"),
        ("anomalies", len(by_name["anomalies"].rows), "anomalous withdrawal days"),
    ]

"""The compliance dashboard's figures, assembled: every table, the trend charts and the tiles.

Aggregate SQL only: no consent, event or request row is ever loaded into Python to be counted, so
the dashboard costs the same few queries with a thousand consents or a million. Each table is a
``Table``, so the page and the CSV export render the very same figures. Every number that counts
people carries the address of the list of those people (``Table.links``, ``Tile.href``: the
workspace's ``/lists/{cohort}?filters``).

The trends cover a range of UTC days (``consents.parse_range``: the last 90 by default, at most
``MAX_RANGE_DAYS``); ``measure`` picks what the per-purpose and per-channel series count.

Delivery health is the delivery engine's aggregate and verdict; reports do not import
``delivery``, so the caller passes a ``health`` function (the web app passes
``web.delivery_ops.health``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from consentflow.models import utcnow
from consentflow.reports._links import days as link_days
from consentflow.reports._links import lists
from consentflow.reports._sql import STATES
from consentflow.reports._table import Chart, Table
from consentflow.reports.consents import (
    Range,
    anomalies,
    anomalous_days,
    default_range,
    event_days,
    expiring,
    series_by,
    states,
    trend,
)
from consentflow.reports.deliveries import HealthRow, delivery
from consentflow.reports.requests import pending_requests, reconsent
from consentflow.reports.runs import recent_runs, runs

#: Where the delivery health comes from: ``session -> rows`` (``web.delivery_ops.health``).
HealthSource = Callable[[Session], Sequence[HealthRow]]


@dataclass(frozen=True)
class Tile:
    name: str
    value: int
    label: str
    #: Where the number leads (the list of the people it counts), if anywhere.
    href: str | None = None


@dataclass
class Dashboard:
    generated_at: datetime
    tables: dict[str, Table]
    #: The trend charts: "trend" (by action), "trend_purpose", "trend_channel".
    charts: dict[str, Chart]
    tiles: list[Tile]
    window: Range
    measure: str

    @property
    def chart(self) -> Chart:
        return self.charts["trend"]


_Builder = Callable[[Session, datetime, HealthSource, Range, str], Table]

TABLES: dict[str, _Builder] = {
    "states": lambda s, now, h, w, m: states(s, now),
    "trend": lambda s, now, h, w, m: trend(s, now, window=w)[0],
    "trend_purpose": lambda s, now, h, w, m: series_by(s, now, "purpose", window=w, measure=m)[0],
    "trend_channel": lambda s, now, h, w, m: series_by(s, now, "channel", window=w, measure=m)[0],
    "pending": lambda s, now, h, w, m: pending_requests(s, now),
    "reconsent": lambda s, now, h, w, m: reconsent(s, now)[0],
    "reconsent_deadlines": lambda s, now, h, w, m: reconsent(s, now)[1],
    "expiring": lambda s, now, h, w, m: expiring(s, now),
    "delivery": lambda s, now, h, w, m: delivery(h(s)),
    "anomalies": lambda s, now, h, w, m: anomalies(s, now, window=w),
    "runs": lambda s, now, h, w, m: runs(s),
    "recent_runs": lambda s, now, h, w, m: recent_runs(s),
}


def table(
    session: Session,
    name: str,
    now: datetime | None = None,
    *,
    health: HealthSource,
    window: Range | None = None,
    measure: str = "withdrawals",
) -> Table | None:
    """One table by name (for the CSV export), or None if there is no such table."""
    now = now or utcnow()
    build_one = TABLES.get(name)
    if build_one is None:
        return None
    found = build_one(session, now, health, window or default_range(now), measure)
    _link(found)
    return found


def build(
    session: Session,
    now: datetime | None = None,
    *,
    health: HealthSource,
    window: Range | None = None,
    measure: str = "withdrawals",
) -> Dashboard:
    """Every table, the trend charts over ``window`` (default: the last 90 days) and the
    headline tiles."""
    now = now or utcnow()
    window = window or default_range(now)
    days_rows = event_days(session, now, window)
    trend_table, chart = trend(session, now, days_rows, window)
    purpose_table, purpose_chart = series_by(session, now, "purpose", days_rows, window, measure)
    channel_table, channel_chart = series_by(session, now, "channel", days_rows, window, measure)
    cohort, deadlines = reconsent(session, now)
    tables = [
        states(session, now),
        trend_table,
        purpose_table,
        channel_table,
        pending_requests(session, now),
        cohort,
        deadlines,
        expiring(session, now),
        delivery(health(session)),
        anomalies(session, now, days_rows, window),
        runs(session),
        recent_runs(session),
    ]
    for t in tables:
        _link(t)
    by_name = {t.name: t for t in tables}
    charts = {"trend": chart, "trend_purpose": purpose_chart, "trend_channel": channel_chart}
    return Dashboard(now, by_name, charts, _tiles(by_name, window), window, measure)


def _link(t: Table) -> None:
    """The links of the tables whose builders do not know the lists (per purpose and state;
    the request tables link their own numbers, from the bounds they count with)."""
    if t.name == "states":
        for i, row in enumerate(t.rows):
            purpose = row[0]
            for state in STATES:
                if row[t.columns.index(state)]:
                    t.link(i, state, lists("consents", purpose=purpose, state=state))
            if row[-1]:
                t.link(i, "total", lists("consents", purpose=purpose))
    elif t.name == "expiring":
        for i, row in enumerate(t.rows):
            if row[1]:
                t.link(i, "within 7 days", lists("expiring", days=7, purpose=row[0]))
            if row[-1]:
                t.link(i, "total", lists("expiring", days=30, purpose=row[0]))


def _tiles(by_name: dict[str, Table], window: Range) -> list[Tile]:
    states_t = by_name["states"]
    overall = states_t.rows[-1]
    health = by_name["delivery"]
    col = {c: i for i, c in enumerate(health.columns)}
    withdrawn = sum(row[2] for row in by_name["trend"].rows)
    stale = sum(row[3] for row in by_name["reconsent"].rows)
    since, until = window.since.isoformat(), window.until.isoformat()
    whole = link_days(since, until)
    return [
        Tile(
            "given",
            overall[1 + STATES.index("given")],
            "consents in force",
            lists("consents", state="given"),
        ),
        Tile(
            "withdrawals",
            withdrawn,
            f"withdrawals {since} to {until}",
            lists("withdrawals", **whole),
        ),
        Tile(
            "not-reconfirmed",
            stale,
            "not yet re-confirmed after a material revision",
            lists("not-reconfirmed"),
        ),
        Tile(
            "pending-requests",
            by_name["pending"].rows[-1][-1],
            "open consent requests",
            lists("requests"),
        ),
        Tile(
            "expiring",
            by_name["expiring"].rows[-1][-1],
            "expire in the next 30 days",
            lists("expiring", days=30),
        ),
        Tile(
            "pending deliveries",
            sum(r[col["pending"]] for r in health.rows),
            "withdrawals not yet delivered",
            lists("deliveries", status="undelivered"),
        ),
        Tile(
            "dead",
            sum(r[col["dead"]] for r in health.rows),
            "dead deliveries awaiting replay",
            lists("deliveries", status="dead"),
        ),
        Tile(
            "anomalies",
            anomalous_days(by_name["anomalies"]),
            "days with anomalous withdrawals",
            "#table-anomalies",
        ),
    ]

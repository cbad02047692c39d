"""Consent figures: counts per purpose and state, the daily trend of grants, withdrawals and
expiries, withdrawal anomalies, and what expires soon.

Aggregate SQL only: every table is one or two ``GROUP BY`` queries whose result has at most a row
per purpose or day, so the cost does not grow with the number of consents. A given consent past
its validity end counts as expired, as the access check answers, even before the sweep records it.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from consentflow.models import Consent, ConsentEvent, State
from consentflow.reports import _where
from consentflow.reports._sql import ALL, STATES, count_if, midnight, purpose_keys, utc_day
from consentflow.reports._table import Chart, Series, Table

TREND_DAYS = 90
BASELINE_DAYS = 28
#: A day is anomalous when its withdrawals exceed this multiple of the trailing median ...
ANOMALY_FACTOR = 3
#: ... and this absolute number (so a quiet purpose going from 1 to 4 is not an alarm).
ANOMALY_MIN = 10


def states(session: Session, now: datetime) -> Table:
    """Consents per purpose and state. A given consent past its validity end counts as expired
    (as the access check answers) even before the sweep has recorded it.

    Two queries: a plain count per (purpose, state), and the lapsed-but-unswept given consents
    from the (state, valid_until) index, which is a short range scan.
    """
    keys = purpose_keys(session)
    per: dict[str, dict[str, int]] = {k: dict.fromkeys(STATES, 0) for k in keys.values()}
    counts_stmt = select(
        col(Consent.purpose_id), col(Consent.state), func.count().label("n")
    ).group_by(col(Consent.purpose_id), col(Consent.state))
    for row in session.execute(counts_stmt):
        counts = per.setdefault(keys[row.purpose_id], dict.fromkeys(STATES, 0))
        counts[row.state] = counts.get(row.state, 0) + int(row.n)
    lapsed_stmt = (
        select(col(Consent.purpose_id), func.count().label("n"))
        # lapsed = ledger.has_lapsed / effective_state (ledger/_rules.py), in SQL
        .where(_where.lapsed(Consent, now))
        .group_by(col(Consent.purpose_id))
    )
    for row in session.execute(lapsed_stmt):
        counts = per[keys[row.purpose_id]]
        counts[State.GIVEN.value] -= int(row.n)
        counts[State.EXPIRED.value] += int(row.n)
    overall = dict.fromkeys(STATES, 0)
    for counts in per.values():
        for s in STATES:
            overall[s] += counts[s]
    table = Table(
        "states",
        "Consents by state",
        ["purpose", *STATES, "total"],
        note="A given consent past its validity end counts as expired, as the access check says.",
    )
    for key in sorted(per):
        table.rows.append([key, *(per[key][s] for s in STATES), sum(per[key].values())])
    table.rows.append([ALL, *(overall[s] for s in STATES), sum(overall.values())])
    return table


#: The actions the trend and the anomaly detector count, and what the page calls them.
_TREND_ACTIONS = {"grant": "grants", "revoke": "withdrawals", "expire": "expiries"}


def event_days(session: Session, now: datetime) -> list[Any]:
    """Grants, withdrawals and expiries per (UTC day, action, purpose) over the trend window and
    the anomaly baseline before it: one grouped query that feeds both the trend and anomalies."""
    since = midnight(now) - timedelta(days=TREND_DAYS - 1 + BASELINE_DAYS)
    day = utc_day(session, ConsentEvent.recorded_at).label("day")
    stmt = (
        select(day, col(ConsentEvent.action), col(ConsentEvent.purpose_id), func.count().label("n"))
        .where(
            col(ConsentEvent.recorded_at) >= since,
            col(ConsentEvent.action).in_(list(_TREND_ACTIONS)),
        )
        .group_by(day, col(ConsentEvent.action), col(ConsentEvent.purpose_id))
    )
    return list(session.execute(stmt))


def trend(
    session: Session, now: datetime, days_rows: list[Any] | None = None
) -> tuple[Table, Chart]:
    """Grants, withdrawals and expiries recorded per day over the last 90 days."""
    rows = event_days(session, now) if days_rows is None else days_rows
    start = midnight(now) - timedelta(days=TREND_DAYS - 1)
    days = [(start + timedelta(days=i)).date().isoformat() for i in range(TREND_DAYS)]
    names = _TREND_ACTIONS
    counts = {name: dict.fromkeys(days, 0) for name in names.values()}
    for row in rows:
        day = str(row.day)
        if day in counts[names[row.action]]:
            counts[names[row.action]][day] += int(row.n)
    table = Table("trend", "Last 90 days", ["day", *names.values()])
    table.rows = [[d, *(counts[n][d] for n in names.values())] for d in days]
    colors = {"grants": "#2e7d32", "withdrawals": "#c62828", "expiries": "#ef6c00"}
    chart = Chart(
        days, [Series(n, colors[n], [counts[n][d] for d in days]) for n in names.values()]
    ).layout()
    return table, chart


def anomalies(session: Session, now: datetime, days_rows: list[Any] | None = None) -> Table:
    """Days (in the last 90) whose withdrawals exceed 3x the median of the 28 days before and 10,
    per purpose and overall."""
    rows = event_days(session, now) if days_rows is None else days_rows
    start = midnight(now) - timedelta(days=TREND_DAYS - 1)
    first = start - timedelta(days=BASELINE_DAYS)
    span = [first + timedelta(days=i) for i in range(TREND_DAYS + BASELINE_DAYS)]
    keys = purpose_keys(session)
    series: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.action != "revoke":
            continue
        for name in (keys[row.purpose_id], ALL):
            per_day = series.setdefault(name, {})
            per_day[str(row.day)] = per_day.get(str(row.day), 0) + int(row.n)
    table = Table(
        "anomalies",
        "Withdrawal anomalies",
        ["day", "purpose", "withdrawals", "baseline (28-day median)", "ratio"],
        note=f"A day is flagged when its withdrawals exceed {ANOMALY_FACTOR}x the median of the "
        f"{BASELINE_DAYS} days before it and {ANOMALY_MIN}.",
    )
    for name, per_day in series.items():
        values = [per_day.get(d.date().isoformat(), 0) for d in span]
        for i in range(BASELINE_DAYS, len(span)):
            n = values[i]
            baseline = statistics.median(values[i - BASELINE_DAYS : i])
            if n > ANOMALY_MIN and n > ANOMALY_FACTOR * baseline:
                ratio = f"{n / baseline:.1f}x" if baseline else "new"
                table.rows.append([span[i].date().isoformat(), name, n, baseline, ratio])
    table.rows.sort(key=lambda r: (r[0], r[1] != ALL, r[1]), reverse=True)
    return table


def expiring(session: Session, now: datetime) -> Table:
    """Given consents whose validity ends in the next 30 days (index on state, valid_until)."""
    t7, t14, t30 = (now + timedelta(days=d) for d in (7, 14, 30))
    until = col(Consent.valid_until)
    stmt = (
        select(
            col(Consent.purpose_id),
            count_if(until <= t7).label("a"),
            count_if((until > t7) & (until <= t14)).label("b"),
            count_if(until > t14).label("c"),
            func.count().label("n"),
        )
        .where(_where.expiring(Consent, now, t30))
        .group_by(col(Consent.purpose_id))
    )
    keys = purpose_keys(session)
    table = Table(
        "expiring",
        "Expiring in the next 30 days",
        ["purpose", "within 7 days", "8-14 days", "15-30 days", "total"],
    )
    totals = [0, 0, 0, 0]
    for r in session.execute(stmt):
        values = [int(r.a), int(r.b), int(r.c), int(r.n)]
        table.rows.append([keys[r.purpose_id], *values])
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    table.rows.sort(key=lambda r: r[0])
    table.rows.append([ALL, *totals])
    return table

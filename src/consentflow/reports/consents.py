"""Consent figures: counts per purpose and state, the daily trend of grants, withdrawals and
expiries over a chosen range (overall with the imported share, per purpose and per channel),
withdrawal anomalies, and what expires soon.

Aggregate SQL only: every table is one or two ``GROUP BY`` queries whose result has at most a row
per purpose or day, so the cost does not grow with the number of consents. A given consent past
its validity end counts as expired, as the access check answers, even before the sweep records it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from consentflow.errors import InvalidInput
from consentflow.models import Consent, ConsentEvent, Purpose, State
from consentflow.reports import _where
from consentflow.reports._links import days as link_days
from consentflow.reports._links import lists
from consentflow.reports._sql import ALL, STATES, count_if, purpose_keys, utc_day
from consentflow.reports._table import Chart, Series, Table
from consentflow.reports._where import WITHDRAWAL

TREND_DAYS = 90
BASELINE_DAYS = 28
#: A day is judged only when this many days of recorded history lie before it.
MIN_HISTORY_DAYS = BASELINE_DAYS
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
MEASURES = tuple(_TREND_ACTIONS.values())
#: What each measure counts: the consent event action.
_MEASURE_ACTION = {measure: action for action, measure in _TREND_ACTIONS.items()}
#: The widest date range the trend shows (a year and a day).
MAX_RANGE_DAYS = 366
#: How many series a chart draws; the rest are summed into "others" (the table has them all).
MAX_SERIES = 6
#: Line patterns (SVG dash arrays) so series differ by more than colour.
_DASHES = ["", "6 3", "2 3", "10 3 2 3", "1 5", "12 6"]
_COLORS = ["#1f4fd1", "#b71c1c", "#9a4300", "#1b5e20", "#6a1b9a", "#37474f"]
#: The importer's action: a consent migrated from elsewhere, in whatever state it had there.
_IMPORT = "import"


@dataclass(frozen=True)
class Range:
    """The trend's UTC days, ``since`` to ``until``, both included."""

    since: date
    until: date

    @property
    def days(self) -> list[str]:
        n = (self.until - self.since).days + 1
        return [(self.since + timedelta(days=i)).isoformat() for i in range(n)]

    def start(self) -> datetime:
        return datetime(self.since.year, self.since.month, self.since.day, tzinfo=UTC)

    def end(self) -> datetime:
        """The instant after the last day."""
        return datetime(self.until.year, self.until.month, self.until.day, tzinfo=UTC) + (
            timedelta(days=1)
        )


def default_range(now: datetime) -> Range:
    """The last 90 days, today included."""
    today = now.astimezone(UTC).date()
    return Range(today - timedelta(days=TREND_DAYS - 1), today)


def parse_range(since: str | None, until: str | None, now: datetime) -> Range:
    """The range a user asked for (``YYYY-MM-DD``; either may be left out: ``until`` defaults to
    today, ``since`` to 89 days before ``until``). Raises ``InvalidInput`` with one line saying
    what is wrong: a malformed date, ``since`` after ``until``, ``until`` after today, or a range
    over ``MAX_RANGE_DAYS``."""
    today = now.astimezone(UTC).date()

    def day(value: str | None, name: str) -> date | None:
        if value is None or not value.strip():
            return None
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(f"{name}: not a date; use YYYY-MM-DD, e.g. {today}") from None

    end = day(until, "until") or today
    begin = day(since, "since") or end - timedelta(days=TREND_DAYS - 1)
    if end > today:
        raise InvalidInput(f"until: {end} is after today ({today}); choose {today} or earlier")
    if begin > end:
        raise InvalidInput(f"since: {begin} is after until ({end}); swap them")
    if (end - begin).days + 1 > MAX_RANGE_DAYS:
        raise InvalidInput(
            f"since: the range {begin} to {end} is over {MAX_RANGE_DAYS} days; "
            "choose a later since or an earlier until"
        )
    return Range(begin, end)


def event_days(session: Session, now: datetime, window: Range | None = None) -> list[Any]:
    """Grants, withdrawals, expiries and imports per (UTC day, action, purpose) over the trend's
    range and the anomaly baseline before it: one grouped query, read from the (recorded_at,
    action, purpose_id) index alone, that feeds the trends and the anomalies."""
    window = window or default_range(now)
    since = window.start() - timedelta(days=BASELINE_DAYS)
    day = utc_day(session, ConsentEvent.recorded_at).label("day")
    stmt = (
        select(day, col(ConsentEvent.action), col(ConsentEvent.purpose_id), func.count().label("n"))
        .where(
            col(ConsentEvent.recorded_at) >= since,
            col(ConsentEvent.recorded_at) < window.end(),
            col(ConsentEvent.action).in_([*_TREND_ACTIONS, _IMPORT]),
        )
        .group_by(day, col(ConsentEvent.action), col(ConsentEvent.purpose_id))
    )
    return list(session.execute(stmt))


def channel_days(session: Session, window: Range, measure: str) -> list[Any]:
    """One measure's events per (UTC day, channel) over the range: a second grouped query, as
    the channel is not in the trend's index (it reads only that action's rows in the range)."""
    action = _MEASURE_ACTION[measure]
    day = utc_day(session, ConsentEvent.recorded_at).label("day")
    channel = col(ConsentEvent.channel)
    stmt = (
        select(day, channel, func.count().label("n"))
        .where(
            col(ConsentEvent.recorded_at) >= window.start(),
            col(ConsentEvent.recorded_at) < window.end(),
            col(ConsentEvent.action) == action,
        )
        .group_by(day, channel)
    )
    return list(session.execute(stmt))


def _chart(days: list[str], values: dict[str, dict[str, int]], title: str) -> Chart:
    """A line per series (the busiest ``MAX_SERIES - 1`` and "others" past that), each with
    its own colour and dash pattern."""
    names = sorted(values, key=lambda n: (-sum(values[n].values()), n))
    if len(names) > MAX_SERIES:
        kept, rest = names[: MAX_SERIES - 1], names[MAX_SERIES - 1 :]
        others = {d: sum(values[n].get(d, 0) for n in rest) for d in days}
        values = {**{n: values[n] for n in kept}, "others": others}
        names = [*kept, "others"]
    series = [
        Series(n, _COLORS[i], [values[n].get(d, 0) for d in days], dash=_DASHES[i])
        for i, n in enumerate(names)
    ]
    return Chart(days, series, title=title).layout()


def _changes_list(action: str, *, days: str, **filters: str) -> str:
    """The list of one day's changes of one kind: withdrawals have a list of their own."""
    if action == WITHDRAWAL:
        return lists("withdrawals", **filters, **link_days(days))
    return lists("changes", action=action, **filters, **link_days(days))


def trend(
    session: Session,
    now: datetime,
    days_rows: list[Any] | None = None,
    window: Range | None = None,
) -> tuple[Table, Chart]:
    """Grants, withdrawals and expiries recorded per day over the range (default: the last 90
    days), and the consents the importer recorded. Withdrawals link to their list."""
    window = window or default_range(now)
    rows = event_days(session, now, window) if days_rows is None else days_rows
    days = window.days
    names = _TREND_ACTIONS
    counts = {name: dict.fromkeys(days, 0) for name in [*names.values(), "imported"]}
    for row in rows:
        day = str(row.day)
        if day in counts["grants"]:
            counts[names.get(row.action, "imported")][day] += int(row.n)
    table = Table(
        "trend",
        f"Grants, withdrawals and expiries per day, {days[0]} to {days[-1]}",
        ["day", *names.values(), "imported"],
        note="Imported: consents the importer recorded that day (migrated history, in any "
        "state; not people acting that day, so not counted as grants or withdrawals).",
    )
    table.rows = [[d, *(counts[n][d] for n in [*names.values(), "imported"])] for d in days]
    for i, d in enumerate(days):
        for action, name in [*names.items(), (_IMPORT, "imported")]:
            if counts[name][d]:
                table.link(i, name, _changes_list(action, days=d))
    chart = _chart(
        days,
        {n: counts[n] for n in [*names.values(), "imported"]},
        "Grants, withdrawals, expiries and imported consents per day",
    )
    return table, chart


def _split(
    session: Session,
    rows: list[Any],
    window: Range,
    measure: str,
    by: str,
) -> dict[str, dict[str, int]]:
    """Per purpose (from ``event_days`` rows) or per channel (``channel_days`` rows): the
    measure's count per day of the range."""
    action = _MEASURE_ACTION[measure]
    keys = purpose_keys(session) if by == "purpose" else {}
    days = set(window.days)
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        day = str(row.day)
        if day not in days or (by == "purpose" and row.action != action):
            continue
        name = keys[row.purpose_id] if by == "purpose" else str(row.channel)
        per_day = out.setdefault(name, {})
        per_day[day] = per_day.get(day, 0) + int(row.n)
    return out


def series_by(
    session: Session,
    now: datetime,
    by: str,
    days_rows: list[Any] | None = None,
    window: Range | None = None,
    measure: str = "withdrawals",
) -> tuple[Table, Chart]:
    """One measure (grants, withdrawals or expiries) per day, a series per purpose (``by`` =
    "purpose", from ``days_rows`` when given) or per channel ("channel": web, email link,
    support, API, import, system; its own query). Withdrawals link to their list with that
    purpose or channel."""
    if measure not in MEASURES:
        raise InvalidInput(f"measure: use one of {', '.join(MEASURES)}")
    window = window or default_range(now)
    if by == "channel":
        rows = channel_days(session, window, measure)
    else:
        rows = event_days(session, now, window) if days_rows is None else days_rows
    values = _split(session, rows, window, measure, by)
    names = sorted(values)
    days = window.days
    table = Table(
        f"trend_{by}",
        f"{measure.capitalize()} per day and {by}, {days[0]} to {days[-1]}",
        ["day", *names, "total"],
    )
    action = _MEASURE_ACTION[measure]
    for i, d in enumerate(days):
        per = [values[n].get(d, 0) for n in names]
        table.rows.append([d, *per, sum(per)])
        for n, v in zip(names, per, strict=True):
            if v:
                table.link(i, n, _changes_list(action, days=d, **{by: n}))
        if sum(per):
            table.link(i, "total", _changes_list(action, days=d))
    chart = _chart(days, values, f"{measure.capitalize()} per day, a line per {by}")
    return table, chart


def first_days(session: Session) -> dict[str, str]:
    """The UTC day of each purpose's first recorded consent event (and of the first overall, as
    ``ALL``): where its history begins. One statement; each purpose's is the first entry of the
    (purpose, recorded_at) index."""
    first = (
        select(func.min(ConsentEvent.recorded_at))
        .where(col(ConsentEvent.purpose_id) == col(Purpose.id))
        .scalar_subquery()
    )
    out: dict[str, str] = {}
    for key, at in session.execute(select(col(Purpose.key), first)):
        if at is not None:
            out[key] = _day(at)
    if out:
        out[ALL] = min(out.values())
    return out


def _day(value: Any) -> str:
    """A timestamp (an aggregate may come back as a naive UTC string on SQLite) as its UTC day."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC)
    return str(value)[:10]


def anomalies(
    session: Session,
    now: datetime,
    days_rows: list[Any] | None = None,
    window: Range | None = None,
) -> Table:
    """Days in the range whose withdrawals exceed 3x the median of the 28 days before and 10,
    per purpose and overall. A day is judged only when that purpose's recorded history began at
    least 28 days before it (a short history is no baseline: with none, every busy day would look
    "new"). Imported consents (the importer's own action) are not counted: migrated history,
    not people acting that day."""
    window = window or default_range(now)
    rows = event_days(session, now, window) if days_rows is None else days_rows
    first = window.start() - timedelta(days=BASELINE_DAYS)
    n_days = (window.until - window.since).days + 1
    span = [first + timedelta(days=i) for i in range(n_days + BASELINE_DAYS)]
    keys = purpose_keys(session)
    began = first_days(session)
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
        f"{BASELINE_DAYS} days before it and {ANOMALY_MIN}, and only once {MIN_HISTORY_DAYS} "
        "days of history lie before it. Imported consents are not counted.",
    )
    for name, per_day in series.items():
        values = [per_day.get(d.date().isoformat(), 0) for d in span]
        start = began.get(name)
        if start is None:
            continue
        judged_from = date.fromisoformat(start) + timedelta(days=MIN_HISTORY_DAYS)
        for i in range(BASELINE_DAYS, len(span)):
            if span[i].date() < judged_from:
                continue
            n = values[i]
            baseline = statistics.median(values[i - BASELINE_DAYS : i])
            if n > ANOMALY_MIN and n > ANOMALY_FACTOR * baseline:
                ratio = f"{n / baseline:.1f}x" if baseline else "above a zero median"
                table.rows.append([span[i].date().isoformat(), name, n, baseline, ratio])
    table.rows.sort(key=lambda r: (r[0], r[1] != ALL, r[1]), reverse=True)
    for i, row in enumerate(table.rows):
        table.link(i, "withdrawals", _changes_list(WITHDRAWAL, days=row[0], purpose=row[1]))
    return table


def anomalous_days(table: Table) -> int:
    """How many days the anomaly table flags (a day flagged for several purposes counts once)."""
    return len({row[0] for row in table.rows})


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

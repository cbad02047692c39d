"""The compliance dashboard's figures: aggregate SQL only.

Every table is one or two ``GROUP BY`` queries whose result has at most a row per purpose, system
or day; no consent, event or request row is ever loaded into Python to be counted, so the page
costs the same few queries with a thousand consents or a million. Each query is written once for
both databases; the only dialect difference (turning a timestamp into a UTC day) is ``_day``.

Each table is a ``Table`` (title, columns, rows) so that the page and the CSV export render the
very same figures.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, type_coerce
from sqlmodel import Session, col, select

from consentflow import purposes
from consentflow.db import is_postgres
from consentflow.models import (
    AuditEntry,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Purpose,
    PurposeVersion,
    RequestKind,
    RequestStatus,
    State,
    UTCDateTime,
    utcnow,
)
from consentflow.settings import get_settings
from consentflow.web import delivery_ops

_PLAIN = re.compile(r"-|-?\d+(\.\d+)?")
TREND_DAYS = 90
BASELINE_DAYS = 28
#: A day is anomalous when its withdrawals exceed this multiple of the trailing median ...
ANOMALY_FACTOR = 3
#: ... and this absolute number (so a quiet purpose going from 1 to 4 is not an alarm).
ANOMALY_MIN = 10
STATES = [s.value for s in State]
ALL = "(all purposes)"


@dataclass(frozen=True)
class Link:
    """A cell that links somewhere; the CSV gets the address."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.href


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def numeric(self, index: int) -> bool:
        """Whether a column holds numbers (right-aligned on the page)."""
        values = [row[index] for row in self.rows if row[index] is not None]
        return bool(values) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    text = str(value)
    # Spreadsheets run cells that start like a formula; neutralise them (numbers stay numbers).
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN.fullmatch(text):
        return "'" + text
    return text


@dataclass
class Series:
    name: str
    color: str
    values: list[int]
    points: str = ""


@dataclass
class Chart:
    days: list[str]
    series: list[Series]
    width: int = 720
    height: int = 180
    pad: int = 30
    top: int = 1

    def layout(self) -> Chart:
        self.top = max([1, *(max(s.values, default=0) for s in self.series)])
        n = max(len(self.days) - 1, 1)
        inner_w, inner_h = self.width - 2 * self.pad, self.height - 2 * self.pad
        for s in self.series:
            s.points = " ".join(
                f"{self.pad + i * inner_w / n:.1f},"
                f"{self.pad + inner_h - v * inner_h / self.top:.1f}"
                for i, v in enumerate(s.values)
            )
        return self


@dataclass
class Dashboard:
    generated_at: datetime
    tables: dict[str, Table]
    chart: Chart
    tiles: list[tuple[str, Any, str]]


# ------------------------------------------------------------------------------- helpers


def _day(session: Session, column: Any) -> ColumnElement[str]:
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD', in SQL."""
    if is_postgres(session):
        return func.to_char(
            func.timezone(literal_column("'UTC'"), column), literal_column("'YYYY-MM-DD'")
        )
    return func.date(column)


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _purpose_keys(session: Session) -> dict[int, str]:
    return {pid: key for pid, key in session.exec(select(Purpose.id, Purpose.key)).all()}


def _midnight(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


# ------------------------------------------------------------------------------- tables


def states(session: Session, now: datetime) -> Table:
    """Consents per purpose and state. A given consent past its validity end counts as expired
    (as the access check answers) even before the sweep has recorded it.

    Two queries: a plain count per (purpose, state), and the lapsed-but-unswept given consents
    from the (state, valid_until) index, which is a short range scan.
    """
    keys = _purpose_keys(session)
    per: dict[str, dict[str, int]] = {k: dict.fromkeys(STATES, 0) for k in keys.values()}
    counts_stmt = select(Consent.purpose_id, Consent.state, func.count().label("n")).group_by(
        col(Consent.purpose_id), col(Consent.state)
    )
    for row in session.exec(counts_stmt):
        counts = per.setdefault(keys[row.purpose_id], dict.fromkeys(STATES, 0))
        counts[row.state] = counts.get(row.state, 0) + int(row.n)
    lapsed_stmt = (
        select(Consent.purpose_id, func.count().label("n"))
        .where(Consent.state == State.GIVEN.value, col(Consent.valid_until) <= now)
        .group_by(col(Consent.purpose_id))
    )
    for row in session.exec(lapsed_stmt):
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
    since = _midnight(now) - timedelta(days=TREND_DAYS - 1 + BASELINE_DAYS)
    day = _day(session, ConsentEvent.recorded_at).label("day")
    stmt = (
        select(day, ConsentEvent.action, ConsentEvent.purpose_id, func.count().label("n"))
        .where(
            col(ConsentEvent.recorded_at) >= since,
            col(ConsentEvent.action).in_(list(_TREND_ACTIONS)),
        )
        .group_by(day, col(ConsentEvent.action), col(ConsentEvent.purpose_id))
    )
    return list(session.exec(stmt))


def trend(
    session: Session, now: datetime, days_rows: list[Any] | None = None
) -> tuple[Table, Chart]:
    """Grants, withdrawals and expiries recorded per day over the last 90 days."""
    rows = event_days(session, now) if days_rows is None else days_rows
    start = _midnight(now) - timedelta(days=TREND_DAYS - 1)
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
    start = _midnight(now) - timedelta(days=TREND_DAYS - 1)
    first = start - timedelta(days=BASELINE_DAYS)
    span = [first + timedelta(days=i) for i in range(TREND_DAYS + BASELINE_DAYS)]
    keys = _purpose_keys(session)
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


def pending_requests(session: Session, now: datetime) -> Table:
    """Open consent requests per purpose and kind, by age."""
    t7, t30, t90 = (now - timedelta(days=d) for d in (7, 30, 90))
    at = col(ConsentRequest.requested_at)
    stmt = (
        select(
            ConsentRequest.purpose_id,
            ConsentRequest.kind,
            _count_if(at >= t7).label("a"),
            _count_if((at < t7) & (at >= t30)).label("b"),
            _count_if((at < t30) & (at >= t90)).label("c"),
            _count_if(at < t90).label("d"),
            func.count().label("n"),
        )
        .where(ConsentRequest.status == RequestStatus.OPEN.value)
        .group_by(col(ConsentRequest.purpose_id), col(ConsentRequest.kind))
    )
    keys = _purpose_keys(session)
    table = Table(
        "pending",
        "Pending requests by age",
        ["purpose", "kind", "< 7 days", "7-30 days", "30-90 days", "> 90 days", "total"],
    )
    totals = [0, 0, 0, 0, 0]
    for r in session.exec(stmt):
        values = [int(r.a), int(r.b), int(r.c), int(r.d), int(r.n)]
        table.rows.append([keys[r.purpose_id], r.kind, *values])
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    table.rows.sort(key=lambda r: (r[0], r[1]))
    table.rows.append([ALL, "all", *totals])
    return table


def reconsent(session: Session, now: datetime) -> tuple[Table, Table]:
    """The cohort to re-confirm after each purpose's latest material revision, and when the open
    re-consent requests lapse."""
    infos = {i.id: i for i in purposes.info(session).values() if i.material_version > 1}
    cohort = Table(
        "reconsent",
        "Re-consent after the latest material revision",
        [
            "purpose",
            "material version",
            "published",
            "not yet re-confirmed",
            "on the new notice",
            "invalidated",
            "open requests",
            "overdue",
            "first deadline",
            "last deadline",
        ],
        note="'Not yet re-confirmed': given on an older notice version; they lapse (are "
        "invalidated) when their re-consent request's deadline passes.",
    )
    deadlines = Table(
        "reconsent_deadlines",
        "Re-consent deadlines: how many lapse when",
        ["purpose", "deadline (day)", "open requests"],
    )
    if not infos:
        return cohort, deadlines
    published = {
        pid: created
        for pid, version, created in session.exec(
            select(
                PurposeVersion.purpose_id, PurposeVersion.version, PurposeVersion.created_at
            ).where(col(PurposeVersion.purpose_id).in_(list(infos)))
        ).all()
        if version == infos[pid].material_version
    }
    mv = case(
        *((col(Consent.purpose_id) == pid, info.material_version) for pid, info in infos.items()),
        else_=0,
    )
    given = Consent.state == State.GIVEN.value
    counts = {
        r.purpose_id: r
        for r in session.exec(
            select(
                Consent.purpose_id,
                _count_if(given & (col(Consent.purpose_version) < mv)).label("old"),
                _count_if(given & (col(Consent.purpose_version) >= mv)).label("new"),
                _count_if(Consent.state == State.INVALIDATED.value).label("invalidated"),
            )
            .where(col(Consent.purpose_id).in_(list(infos)))
            .group_by(col(Consent.purpose_id))
        )
    }
    open_reconsent = (
        (ConsentRequest.status == RequestStatus.OPEN.value)
        & (ConsentRequest.kind == RequestKind.RECONSENT.value)
        & col(ConsentRequest.purpose_id).in_(list(infos))
    )
    requests = {
        r.purpose_id: r
        for r in session.exec(
            select(
                ConsentRequest.purpose_id,
                func.count().label("n"),
                _count_if(col(ConsentRequest.deadline) < now).label("overdue"),
                type_coerce(func.min(ConsentRequest.deadline), UTCDateTime).label("first"),
                type_coerce(func.max(ConsentRequest.deadline), UTCDateTime).label("last"),
            )
            .where(open_reconsent)
            .group_by(col(ConsentRequest.purpose_id))
        )
    }
    for pid, info in sorted(infos.items(), key=lambda kv: kv[1].key):
        c, r = counts.get(pid), requests.get(pid)
        cohort.rows.append(
            [
                info.key,
                info.material_version,
                published.get(pid),
                int(c.old) if c else 0,
                int(c.new) if c else 0,
                int(c.invalidated) if c else 0,
                int(r.n) if r else 0,
                int(r.overdue) if r else 0,
                r.first if r else None,
                r.last if r else None,
            ]
        )
    day = _day(session, ConsentRequest.deadline).label("day")
    for r in session.exec(
        select(ConsentRequest.purpose_id, day, func.count().label("n"))
        .where(open_reconsent)
        .group_by(col(ConsentRequest.purpose_id), day)
        .order_by(day)
        .limit(200)
    ):
        deadlines.rows.append([infos[r.purpose_id].key, r.day or "none", int(r.n)])
    return cohort, deadlines


def expiring(session: Session, now: datetime) -> Table:
    """Given consents whose validity ends in the next 30 days (index on state, valid_until)."""
    t7, t14, t30 = (now + timedelta(days=d) for d in (7, 14, 30))
    until = col(Consent.valid_until)
    stmt = (
        select(
            Consent.purpose_id,
            _count_if(until <= t7).label("a"),
            _count_if((until > t7) & (until <= t14)).label("b"),
            _count_if(until > t14).label("c"),
            func.count().label("n"),
        )
        .where(Consent.state == State.GIVEN.value, until > now, until <= t30)
        .group_by(col(Consent.purpose_id))
    )
    keys = _purpose_keys(session)
    table = Table(
        "expiring",
        "Expiring in the next 30 days",
        ["purpose", "within 7 days", "8-14 days", "15-30 days", "total"],
    )
    totals = [0, 0, 0, 0]
    for r in session.exec(stmt):
        values = [int(r.a), int(r.b), int(r.c), int(r.n)]
        table.rows.append([keys[r.purpose_id], *values])
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    table.rows.sort(key=lambda r: r[0])
    table.rows.append([ALL, *totals])
    return table


def delivery(session: Session, now: datetime) -> Table:
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
    for h in delivery_ops.health(session):
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


_RUN_ACTIONS = ["flow.run", "flow.dry_run"]
_RUN_COLUMNS = ["finished", "flow", "outcome", "dry run", "totals", "requested by", "run"]
#: Outcomes a propagate run reports without having done anything (deliveries still held back).
_IDLE_OUTCOMES = ("held",)


def _flow_names() -> list[str]:
    from consentflow import runs

    return runs.flow_names()


def _run_row(r: Any, ui: str) -> list[Any]:
    detail = r.detail or {}
    totals = detail.get("totals") or {}
    text = ", ".join(f"{k}: {v}" for k, v in sorted(totals.items())) or "-"
    run_id = r.run_id or detail.get("run_id")
    run: Any = run_id or "-"
    if run_id and ui:
        run = Link(str(run_id), f"{ui}/runs/flow-run/{run_id}")
    return [
        r.recorded_at,
        detail.get("flow", "?"),
        detail.get("outcome", "?"),
        "yes" if r.action == "flow.dry_run" else "no",
        text,
        detail.get("requested_by") or "-",
        run,
    ]


def _run_entries(where: Any, limit: int) -> Any:
    return (
        select(
            AuditEntry.seq,
            AuditEntry.recorded_at,
            AuditEntry.action,
            AuditEntry.run_id,
            AuditEntry.detail,
        )
        .where(col(AuditEntry.action).in_(_RUN_ACTIONS), where)
        .order_by(col(AuditEntry.seq).desc())
        .limit(limit)
    )


def _idle_propagate(session: Session) -> ColumnElement[bool]:
    """A propagate run that completed having done nothing: its totals have no outcome besides
    ``held`` (deliveries waiting for a paused system are counted by every run)."""
    detail = AuditEntry.__table__.c.detail
    if is_postgres(session):
        key: Any = func.json_object_keys(detail["totals"]).column_valued("k")
    else:
        key = func.json_each(detail, "$.totals").table_valued("key").c.key
    acted = select(literal_column("1")).where(key.not_in(_IDLE_OUTCOMES))
    return (
        (detail["flow"].as_string() == "propagate")
        & (detail["outcome"].as_string() == "completed")
        & ~acted.exists()
    )


def runs(session: Session) -> Table:
    """The latest run of each flow (whatever it did: a quiet ``propagate`` shows it is alive),
    from the audit trail, linked to the Prefect UI. One statement: per flow, a newest-first
    walk of the run entries that stops at the flow's first."""
    ui = (get_settings().prefect_ui_url or "").rstrip("/")
    detail = AuditEntry.__table__.c.detail
    latest = [
        select(AuditEntry.seq)
        .where(col(AuditEntry.action).in_(_RUN_ACTIONS), detail["flow"].as_string() == name)
        .order_by(col(AuditEntry.seq).desc())
        .limit(1)
        .scalar_subquery()
        for name in _flow_names()
    ]
    table = Table(
        "runs",
        "Latest run of each flow",
        _RUN_COLUMNS,
        note="Each flow's most recent run (dry run or real), newest first; flows that never "
        "ran are not listed.",
    )
    rows = session.exec(_run_entries(col(AuditEntry.seq).in_(latest), len(latest)))
    table.rows = [_run_row(r, ui) for r in rows]
    return table


def recent_runs(session: Session, limit: int = 10) -> Table:
    """The latest flow runs overall, leaving out the ``propagate`` runs that did nothing (a
    frequent schedule would otherwise push every other run off the list)."""
    ui = (get_settings().prefect_ui_url or "").rstrip("/")
    table = Table(
        "recent_runs",
        "Recent flow runs",
        _RUN_COLUMNS,
        note=f"The {limit} latest runs of any flow; propagate runs that delivered nothing "
        "(at most deliveries held for a paused system) are left out.",
    )
    rows = session.exec(_run_entries(~_idle_propagate(session), limit))
    table.rows = [_run_row(r, ui) for r in rows]
    return table


# ------------------------------------------------------------------------------- the page

TABLES: dict[str, Callable[[Session, datetime], list[Table]]] = {
    "states": lambda s, now: [states(s, now)],
    "trend": lambda s, now: [trend(s, now)[0]],
    "pending": lambda s, now: [pending_requests(s, now)],
    "reconsent": lambda s, now: [reconsent(s, now)[0]],
    "reconsent_deadlines": lambda s, now: [reconsent(s, now)[1]],
    "expiring": lambda s, now: [expiring(s, now)],
    "delivery": lambda s, now: [delivery(s, now)],
    "anomalies": lambda s, now: [anomalies(s, now)],
    "runs": lambda s, now: [runs(s)],
    "recent_runs": lambda s, now: [recent_runs(s)],
}


def table(session: Session, name: str, now: datetime | None = None) -> Table | None:
    """One table by name (for the CSV export), or None if there is no such table."""
    build_one = TABLES.get(name)
    return build_one(session, now or utcnow())[0] if build_one else None


def build(session: Session, now: datetime | None = None) -> Dashboard:
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
        delivery(session, now),
        anomalies(session, now, days_rows),
        runs(session),
        recent_runs(session),
    ]
    by_name = {t.name: t for t in tables}
    overall = by_name["states"].rows[-1]
    health = by_name["delivery"].rows
    last30 = sum(row[2] for row in trend_table.rows[-30:])
    tiles = [
        ("given", overall[1 + STATES.index("given")], "consents in force"),
        ("withdrawals", last30, "withdrawals in the last 30 days"),
        ("expiring", by_name["expiring"].rows[-1][-1], "expire in the next 30 days"),
        ("pending deliveries", sum(r[2] for r in health), "withdrawals not yet delivered"),
        ("dead", sum(r[7] for r in health), "dead deliveries awaiting replay"),
        ("anomalies", len(by_name["anomalies"].rows), "anomalous withdrawal days"),
    ]
    return Dashboard(now, by_name, chart, tiles)

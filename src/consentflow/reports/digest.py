"""The compliance digest: what compliance must hear about for one period, as counts.

``gather(session, since, until)`` computes six sections for the period ``[since, until)``:

* ``lapsed``: consents that expired or were invalidated (their events recorded in the period),
  and consent requests that lapsed unanswered (closed in the period), per purpose;
* ``deadlines``: re-consent requests whose deadline falls in the 7 days after ``until``, per
  purpose, with how many of them are still unanswered (open);
* ``dead_letters``: webhook deliveries dead-lettered in the period (their
  ``delivery.dead_lettered`` audit entries), per system;
* ``failing``: systems whose every delivery attempt since their last success failed, the first
  failure more than an hour before ``until``, with deliveries still undelivered;
* ``anomalies``: withdrawal anomalies (``reports.anomalies``) on the period's days;
* ``audit``: the result of ``audit verify`` (``integrity.check``) at the time of gathering.

Each line carries the workspace link where the people behind it are listed
(``/lists/{cohort}?...``, the workspace's cohort contract). ``render_text`` and
``render_markdown`` write the digest for an email or chat channel and for the Prefect artifact.

Invariants: set-based (a handful of grouped queries whatever the size of the ledger; the audit
verification walks the record once, in chunks); counts, purposes and systems only: never a
person, an email address, a subject reference or an audit finding's text (a failed verification
is reported by its number of findings and the first bad entry's sequence number).
Failure modes: none of its own; it only reads. ``anomalies`` belongs to the dashboard: its table
is read by column name, so a reworked table still fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from consentflow import integrity
from consentflow.models import (
    Action,
    AuditEntry,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    RequestKind,
    RequestStatus,
    State,
    System,
)
from consentflow.reports._links import days as link_days
from consentflow.reports._links import lists
from consentflow.reports._sql import ALL, count_if, purpose_keys
from consentflow.reports.consents import anomalies
from consentflow.timeutil import as_utc

#: How far ahead the re-consent deadlines are announced.
DEADLINE_DAYS = 7
#: How long every attempt at a system must have failed before it is "failing" in the digest.
FAILING_FOR = timedelta(hours=1)
#: The first digest looks back this far (later ones start where the previous one ended).
FIRST_PERIOD = timedelta(hours=24)

SECTIONS = {
    "lapsed": "Consents that lapsed",
    "deadlines": f"Re-consent deadlines in the next {DEADLINE_DAYS} days",
    "dead_letters": "Dead-lettered deliveries",
    "failing": "Systems failing for more than an hour",
    "anomalies": "Withdrawal anomalies",
    "audit": "Audit verification",
}


@dataclass(frozen=True)
class Line:
    """One counted fact: what, for which purpose or system, how many, and where to see them."""

    what: str
    count: int
    #: The list of them (a workspace address), or "" when there is none.
    href: str
    purpose: str | None = None
    system: str | None = None
    note: str = ""

    def label(self) -> str:
        about = self.purpose or self.system
        return f"{self.what} ({about})" if about else self.what


@dataclass
class Section:
    key: str
    title: str
    lines: list[Line] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The section's figure: how many lapsed, unanswered, dead-lettered, audit findings;
        for ``failing`` and ``anomalies`` how many systems and anomalous (day, purpose) pairs."""
        if self.key in ("failing", "anomalies"):
            return len(self.lines)
        return sum(line.count for line in self.lines)


@dataclass
class Digest:
    since: datetime
    until: datetime
    sections: list[Section]
    audit_ok: bool

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)

    def counts(self) -> dict[str, int]:
        """The total per section (``audit``: the number of findings), for the audit entry."""
        return {s.key: s.total for s in self.sections}

    @property
    def attention(self) -> bool:
        """Whether anything needs looking at (the subject line says so)."""
        return any(s.total for s in self.sections)


def _iso(ts: datetime) -> str:
    """An instant to the second, UTC (``2026-11-30T07:30:00Z``)."""
    return ts.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def gather(session: Session, since: datetime, until: datetime) -> Digest:
    """Every section of the digest for ``[since, until)`` (module docstring)."""
    keys = purpose_keys(session)
    sections = [
        Section("lapsed", SECTIONS["lapsed"], _lapsed(session, keys, since, until)),
        Section("deadlines", SECTIONS["deadlines"], _deadlines(session, keys, until)),
        Section("dead_letters", SECTIONS["dead_letters"], _dead_letters(session, since, until)),
        Section("failing", SECTIONS["failing"], _failing_lines(session, until)),
        Section("anomalies", SECTIONS["anomalies"], _anomalies(session, since, until)),
    ]
    verified = integrity.check(session)
    audit = Section("audit", SECTIONS["audit"])
    if not verified["ok"]:
        first = verified.get("first_bad")
        audit.lines.append(
            Line(
                "audit verify findings",
                len(verified["findings"]),
                "/api/v1/audit/verify",
                note=f"first bad entry {first}" if first else "the record differs from the chain",
            )
        )
    return Digest(since, until, [*sections, audit], audit_ok=bool(verified["ok"]))


def _lapsed(session: Session, keys: dict[int, str], since: datetime, until: datetime) -> list[Line]:
    lines: list[Line] = []
    lapsing = {Action.EXPIRE.value: State.EXPIRED.value, Action.INVALIDATE.value: "invalidated"}
    events = session.execute(
        select(col(ConsentEvent.action), col(ConsentEvent.purpose_id), func.count().label("n"))
        .where(
            col(ConsentEvent.recorded_at) >= since,
            col(ConsentEvent.recorded_at) < until,
            col(ConsentEvent.action).in_(list(lapsing)),
        )
        .group_by(col(ConsentEvent.action), col(ConsentEvent.purpose_id))
    ).all()
    for action, pid, n in sorted(events, key=lambda r: (r[0], keys[r[1]])):
        href = lists("changes", action=action, purpose=keys[pid], since=since, until=until)
        lines.append(Line(f"consents {lapsing[action]}", int(n), href, purpose=keys[pid]))
    requests = session.execute(
        select(col(ConsentRequest.purpose_id), func.count().label("n"))
        .where(
            col(ConsentRequest.status) == RequestStatus.LAPSED.value,
            col(ConsentRequest.closed_at) >= since,
            col(ConsentRequest.closed_at) < until,
        )
        .group_by(col(ConsentRequest.purpose_id))
    ).all()
    for pid, n in sorted(requests, key=lambda r: keys[r[0]]):
        # No list holds closed requests: the people are in "consents invalidated" (re-consent).
        lines.append(Line("requests lapsed unanswered", int(n), "", purpose=keys[pid]))
    return lines


def _deadlines(session: Session, keys: dict[int, str], now: datetime) -> list[Line]:
    horizon = now + timedelta(days=DEADLINE_DAYS)
    rows = session.execute(
        select(
            col(ConsentRequest.purpose_id),
            func.count().label("n"),
            count_if(col(ConsentRequest.status) == RequestStatus.OPEN.value).label("open"),
        )
        .where(
            col(ConsentRequest.kind) == RequestKind.RECONSENT.value,
            col(ConsentRequest.deadline) >= now,
            col(ConsentRequest.deadline) < horizon,
        )
        .group_by(col(ConsentRequest.purpose_id))
    ).all()
    return [
        Line(
            "re-consent requests still unanswered",
            int(r.open),
            lists(
                "requests",
                purpose=keys[r.purpose_id],
                kind=RequestKind.RECONSENT.value,
                due_since=now,
                due_until=horizon,
            ),
            purpose=keys[r.purpose_id],
            note=f"of {int(r.n)} due by {horizon.date().isoformat()}",
        )
        for r in sorted(rows, key=lambda r: keys[r.purpose_id])
    ]


def _dead_letters(session: Session, since: datetime, until: datetime) -> list[Line]:
    rows = session.execute(
        select(col(AuditEntry.actor), func.count().label("n"))
        .where(
            col(AuditEntry.action) == "delivery.dead_lettered",
            col(AuditEntry.recorded_at) >= since,
            col(AuditEntry.recorded_at) < until,
        )
        .group_by(col(AuditEntry.actor))
    ).all()
    return [
        Line(
            "deliveries dead-lettered",
            int(n),
            lists("deliveries", system=system, status="dead"),
            system=system,
        )
        for system, n in sorted(rows, key=lambda r: str(r[0]))
    ]


def failing_systems(
    session: Session, now: datetime, *, longer_than: timedelta = FAILING_FOR
) -> dict[str, datetime]:
    """The systems failing for more than ``longer_than``: every attempt since their last success
    failed, the first of those before ``now - longer_than``, and deliveries still undelivered;
    name -> when it started failing (that first failed attempt)."""
    failed = or_(
        col(DeliveryAttempt.status_code).is_(None),
        col(DeliveryAttempt.status_code) < 200,
        col(DeliveryAttempt.status_code) >= 300,
    )
    waiting = aliased(Delivery)
    undelivered = (
        select(col(waiting.id))
        .where(
            col(waiting.system_id) == col(System.id),
            col(waiting.state).in_([DeliveryState.PENDING.value, DeliveryState.DEAD.value]),
        )
        .correlate_except(waiting)
        .exists()
    )
    rows = session.execute(
        select(col(System.name), func.min(DeliveryAttempt.started_at).label("first"))
        .join(Delivery, col(Delivery.system_id) == col(System.id))
        .join(DeliveryAttempt, col(DeliveryAttempt.delivery_id) == col(Delivery.id))
        .where(
            col(System.webhook_url).is_not(None),
            failed,
            or_(
                col(System.last_success_at).is_(None),
                col(DeliveryAttempt.started_at) > col(System.last_success_at),
            ),
            undelivered,
            col(DeliveryAttempt.started_at) <= now,
        )
        .group_by(col(System.name))
    ).all()
    out = {}
    for name, first in rows:
        started = as_utc(first)
        if started is not None and started <= now - longer_than:
            out[str(name)] = started
    return out


def _failing_lines(session: Session, now: datetime) -> list[Line]:
    return [
        Line(
            "system failing",
            1,
            lists("deliveries", system=name, status="undelivered"),
            system=name,
            note=f"every attempt failed since {_iso(started)}",
        )
        for name, started in sorted(failing_systems(session, now).items())
    ]


def _column(table: Any, name: str, default: int) -> int:
    return table.columns.index(name) if name in table.columns else default


def anomaly_days(session: Session, since: datetime, until: datetime) -> list[tuple[str, str, int]]:
    """The withdrawal anomalies (``reports.anomalies``) on the days of ``[since, until]``:
    (day, purpose, withdrawals), the overall row included (purpose ``ALL``)."""
    table = anomalies(session, until)
    day_i, purpose_i = _column(table, "day", 0), _column(table, "purpose", 1)
    n_i = _column(table, "withdrawals", 2)
    first = since.date().isoformat()
    return [
        (str(row[day_i]), str(row[purpose_i]), int(row[n_i]))
        for row in table.rows
        if str(row[day_i]) >= first
    ]


def _anomalies(session: Session, since: datetime, until: datetime) -> list[Line]:
    lines = []
    for day, purpose, n in sorted(anomaly_days(session, since, until)):
        href = lists("withdrawals", purpose=purpose, **link_days(day))
        lines.append(Line(f"withdrawals on {day}", n, href, purpose=purpose, note="anomalous"))
    return lines


def render_text(digest: Digest, base_url: str = "") -> tuple[str, str]:
    """The digest as an email or chat message: (title, plain text)."""
    base = base_url.rstrip("/")
    period = f"{_iso(digest.since)} to {_iso(digest.until)}"
    title = "consentflow: compliance digest " + digest.until.date().isoformat()
    if not digest.audit_ok:
        title += " (audit verification FAILED)"
    elif digest.attention:
        title += " (needs attention)"
    out = [f"Compliance digest for {period} (UTC).", ""]
    for section in digest.sections:
        out.append(f"{section.title}: {_section_total(section)}")
        for line in section.lines:
            note = f", {line.note}" if line.note else ""
            where = f"  {base}{line.href}" if line.href else ""
            out.append(f"  - {line.label()}: {line.count}{note}{where}")
        out.append("")
    out.append("Counts only: follow a link to see the people behind a number.")
    return title, "\n".join(out) + "\n"


def render_markdown(digest: Digest, base_url: str = "") -> str:
    """The digest as Markdown (the Prefect artifact)."""
    base = base_url.rstrip("/")
    title, _ = render_text(digest, base_url)
    out = [f"# {title.removeprefix('consentflow: ')}", ""]
    out.append(f"Period: {_iso(digest.since)} to {_iso(digest.until)} (UTC).")
    for section in digest.sections:
        out += ["", f"## {section.title}: {_section_total(section)}", ""]
        if not section.lines:
            continue
        out += ["| what | purpose or system | count | note |", "| --- | --- | --- | --- |"]
        for line in section.lines:
            what = f"[{line.what}]({base}{line.href})" if line.href else line.what
            about = line.purpose or line.system or ""
            out.append(f"| {what} | {about} | {line.count} | {line.note} |")
    return "\n".join(out) + "\n"


def _section_total(section: Section) -> str:
    if section.key == "audit":
        return "passed" if not section.lines else f"FAILED ({section.total} findings)"
    return str(section.total) if section.lines else "none"


@dataclass(frozen=True)
class Alert:
    """One immediate alert: ``key`` names the occurrence (an alert is sent once per key)."""

    key: str
    event: str
    title: str
    text: str


def due_alerts(session: Session, now: datetime, base_url: str = "") -> list[Alert]:
    """The conditions that call for an immediate alert now: each system failing for more than
    an hour (once per failing spell: the key holds when it started failing), a withdrawal
    anomaly today or yesterday (once per day and purpose), and a failed audit verification
    (once per first bad entry, or per number of findings when the chain holds but the record
    differs). Which were already sent is the caller's to check (``alerted``)."""
    base = base_url.rstrip("/")
    alerts = []
    for name, started in sorted(failing_systems(session, now).items()):
        href = lists("deliveries", system=name, status="undelivered")
        alerts.append(
            Alert(
                f"system-failing:{name}:{_iso(started)}",
                "consentflow.endpoint.failing_long",
                f"consentflow: endpoint {name} failing for more than an hour",
                f"Every delivery attempt at {name} since {_iso(started)} failed; withdrawals "
                f"are waiting.\nUndelivered: {base}{href}\n",
            )
        )
    for day, purpose, n in sorted(anomaly_days(session, now - timedelta(days=1), now)):
        about = "all purposes" if purpose == ALL else purpose
        href = lists("withdrawals", purpose=purpose, **link_days(day))
        alerts.append(
            Alert(
                f"withdrawal-anomaly:{day}:{purpose}",
                "consentflow.withdrawals.anomaly",
                f"consentflow: withdrawal anomaly on {day} ({about})",
                f"{n} withdrawals on {day} ({about}), far above the usual.\n"
                f"Withdrawals: {base}{href}\n",
            )
        )
    verified = integrity.check(session)
    if not verified["ok"]:
        first = verified.get("first_bad")
        occurrence = f"entry-{first}" if first else f"record-{len(verified['findings'])}"
        alerts.append(
            Alert(
                f"audit-verify-failed:{occurrence}",
                "consentflow.audit.verify_failed",
                "consentflow: audit verification FAILED",
                f"`consentflow audit verify` reports {len(verified['findings'])} finding(s)"
                + (f", the first bad entry is {first}" if first else "")
                + ". Run `consentflow audit verify` and investigate before any erasure, key "
                "rotation or retention sweep (they are refused meanwhile).\n",
            )
        )
    return alerts


def alerted(session: Session, since: datetime) -> set[str]:
    """The alert keys sent since ``since`` (the ``key`` of ``alert.sent`` entries that reached
    a channel)."""
    rows = session.execute(
        select(col(AuditEntry.detail)).where(
            col(AuditEntry.action) == "alert.sent", col(AuditEntry.recorded_at) >= since
        )
    ).scalars()
    return {
        str(d["key"])
        for d in rows
        if isinstance(d, dict) and d.get("key") and d.get("outcome") == "sent"
    }

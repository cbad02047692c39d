"""compliance-digest: tell compliance, without their looking, what lapsed and what needs them.

The daily digest (deployment ``compliance-digest/daily``), step by step:

1. **plan** the period: from the end of the previous digest (its ``compliance.digest`` audit
   entry; 24 hours back on the first run) to now. The period is named by the UTC day it ends
   on: a digest already sent for that day is not sent again (a re-run or a retry sends nothing),
   except to a channel that failed the first time;
2. **gather** the figures (``consentflow.reports.digest.gather``: lapsed consents and requests,
   re-consent deadlines in the next 7 days with how many are unanswered, dead letters, systems
   failing for more than an hour, withdrawal anomalies, the audit verification);
3. **render** them as text (email, chat) and Markdown, published as the Prefect artifact
   ``compliance-digest``;
4. **send** once to every channel (``flows.channels``: each ``CONSENTFLOW_ALERT_URLS`` Apprise
   URL and ``CONSENTFLOW_COMPLIANCE_EMAIL``);
5. **record** the audit entry ``compliance.digest`` (the period, the counts per section and the
   outcome per channel).

With ``alerts_only`` (deployment ``compliance-digest/alerts``, hourly) the run sends instead the
immediate alerts now due (``reports.digest.due_alerts``: a system failing for more than an hour,
a withdrawal anomaly, a failed audit verification), each once: an alert whose key an earlier
``alert.sent`` entry holds is not sent again. Dead letters and endpoints failing right now are
alerted at once by ``operator-alerts`` (the propagate flow's events).

Invariants: the digest, the artifact, logs and audit entries hold counts, purposes and systems,
never a person, an address or an Apprise URL. A dry run gathers, renders and publishes the
artifact, and sends and records nothing. Failure modes: a channel that refuses is retried twice,
then the others still get the digest; if every channel failed, the run records its entry and
ends Failed (operator-alerts reports it; a re-run sends to the failed channels only). With no
channel configured the run completes with a warning (outcome ``unconfigured``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from sqlmodel import col, select

from consentflow import audit, db
from consentflow.models import ActorType, AuditEntry, Channel, utcnow
from consentflow.reports import digest as report
from consentflow.settings import get_settings
from consentflow.timeutil import as_utc
from flows import channels
from flows.common import BATCH_TASK, END_HOOKS, DryRun, checked, form, recorded_run

FLOW = "compliance-digest"
ENTRY = "compliance.digest"
#: Gathering walks the audit record once (``audit verify``); a large ledger takes minutes.
TIMEOUT_SECONDS = 3600
#: How far back the alert keys already sent are looked up.
ALERT_MEMORY = timedelta(days=60)

AlertsOnly = Annotated[
    bool,
    form(
        "Immediate alerts only",
        "Send the immediate alerts now due (a system failing for more than an hour, a "
        "withdrawal anomaly, a failed audit verification), each once, instead of the digest.",
    ),
]


#: The tasks a run sends with, which tests may swap (e.g. for copies without retry delays).
apprise_task = channels.send_apprise
email_task = channels.send_email


def deliver(title: str, body: str, only: frozenset[str] | None = None) -> dict[str, str]:
    """``flows.channels.deliver`` with this module's tasks."""
    return channels.deliver(
        title, body, apprise_task=apprise_task, email_task=email_task, only=only
    )


@dataclass(frozen=True)
class Period:
    """What this run covers, and to which channels it still has to go (None: all)."""

    name: str
    since: datetime
    until: datetime
    pending: frozenset[str] | None = None


def _day(ts: datetime) -> str:
    return ts.date().isoformat()


@task(name="plan-period", retry_delay_seconds=[5, 30], **BATCH_TASK)
def plan(now: datetime) -> Period:
    """The period from the previous digest to ``now``; if a digest for this period's day was
    already recorded, that period again, pending only on the channels it has not reached."""
    name = _day(now)
    with db.session_scope() as session:
        earlier = [
            e.detail
            for e in session.exec(
                audit_entries().where(col(AuditEntry.recorded_at) >= now - timedelta(days=400))
            ).all()
        ]
    same = [d for d in earlier if d.get("period") == name]
    if same:
        reached = {c for d in same for c, o in (d.get("channels") or {}).items() if o == "sent"}
        return Period(
            name,
            _instant(same[0]["since"]),
            _instant(same[0]["until"]),
            frozenset(set(channels.configured()) - reached),
        )
    since = _instant(earlier[-1]["until"]) if earlier else now - report.FIRST_PERIOD
    return Period(name, min(since, now), now)


def audit_entries() -> Any:
    """The ``compliance.digest`` entries, oldest first (an indexed select on the action)."""
    return select(AuditEntry).where(col(AuditEntry.action) == ENTRY).order_by(col(AuditEntry.seq))


def _instant(value: str) -> datetime:
    parsed = as_utc(datetime.fromisoformat(value))
    assert parsed is not None
    return parsed


@task(name="gather-digest", retry_delay_seconds=[5, 30], **BATCH_TASK)
def gather(since: datetime, until: datetime) -> report.Digest:
    """The figures (``reports.digest.gather``), in a read-only unit of work."""
    with db.session_scope() as session:
        return report.gather(session, since, until)


@task(name="record-digest", retry_delay_seconds=[5, 30], **BATCH_TASK)
def record(period: Period, digest: report.Digest, sent: dict[str, str]) -> None:
    """The audit entry ``compliance.digest``: period, counts, the outcome per channel."""
    this_run = flow_run.id
    with db.session_scope() as session:
        audit.record(
            session,
            ENTRY,
            actor_type=ActorType.SYSTEM.value,
            actor=FLOW,
            channel=Channel.SYSTEM.value,
            run_id=str(this_run) if this_run else None,
            detail={
                "period": period.name,
                "since": period.since.isoformat(),
                "until": period.until.isoformat(),
                "counts": digest.counts(),
                "audit_ok": digest.audit_ok,
                "outcome": channels.outcome(sent),
                "channels": sent,
            },
        )


@task(name="due-alerts", retry_delay_seconds=[5, 30], **BATCH_TASK)
def due_alerts(now: datetime) -> list[report.Alert]:
    """The immediate alerts due now that no earlier run sent."""
    with db.session_scope() as session:
        sent = report.alerted(session, now - ALERT_MEMORY)
        due = report.due_alerts(session, now, get_settings().public_url)
    return [a for a in due if a.key not in sent]


@task(name="record-alert", retry_delay_seconds=[5, 30], **BATCH_TASK)
def record_alert(alert: report.Alert, sent: dict[str, str]) -> None:
    """The ``alert.sent`` entry of one immediate alert (its key: never sent twice)."""
    this_run = flow_run.id
    with db.session_scope() as session:
        audit.record(
            session,
            "alert.sent",
            actor_type=ActorType.SYSTEM.value,
            actor=FLOW,
            channel=Channel.SYSTEM.value,
            run_id=str(this_run) if this_run else None,
            detail={
                "event": alert.event,
                "key": alert.key,
                "outcome": channels.outcome(sent),
                "channels": sent,
            },
        )


def send_alerts(now: datetime, dry_run: bool) -> dict[str, Any]:
    """Send each immediate alert due (``alerts_only``); what was sent, by key."""
    outcomes: dict[str, str] = {}
    for alert in due_alerts(now):
        if dry_run:
            outcomes[alert.key] = "would send"
            continue
        sent = deliver(alert.title, alert.text)
        record_alert(alert, sent)
        outcomes[alert.key] = channels.outcome(sent)
    return {"alerts": outcomes}


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def compliance_digest(dry_run: DryRun = False, alerts_only: AlertsOnly = False) -> dict[str, Any]:
    """Gather the period's figures, publish them, send them once to every channel, record it."""
    parameters = checked(FLOW, {"dry_run": dry_run, "alerts_only": alerts_only})
    log = get_run_logger()
    now = utcnow()
    with recorded_run(FLOW, parameters, dry_run) as summary:
        if alerts_only:
            result = send_alerts(now, dry_run)
            for outcome in result["alerts"].values():
                summary.add("-", f"alert {outcome}")
            return result
        period = plan(now)
        digest = gather(period.since, period.until)
        base = get_settings().public_url
        title, text = report.render_text(digest, base)
        create_markdown_artifact(
            key=FLOW,
            markdown=report.render_markdown(digest, base),
            description=f"{title} ({'dry run' if dry_run else period.name})",
        )
        for section, n in digest.counts().items():
            summary.add("-", section, n)
        result = {"period": period.name, "counts": digest.counts(), "channels": {}}
        if dry_run:
            return {**result, "outcome": "dry run"}
        if period.pending is not None and not period.pending:
            log.info("the digest for %s was already sent to every channel", period.name)
            return {**result, "outcome": "already sent"}
        sent = deliver(title, text, only=period.pending)
        record(period, digest, sent)
        outcome = channels.outcome(sent)
        summary.add("-", f"digest {outcome}")
        if outcome == "unconfigured":
            log.warning(
                "no channel configured: set CONSENTFLOW_ALERT_URLS or "
                "CONSENTFLOW_COMPLIANCE_EMAIL on the worker"
            )
        if outcome == "failed":
            raise RuntimeError(f"digest not delivered on any channel: {', '.join(sent)}")
        return {**result, "channels": sent, "outcome": outcome}

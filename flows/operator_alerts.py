"""operator-alerts: tell the operators that a consentflow run failed or crashed, that deliveries
were dead-lettered, or that an endpoint is failing.

Started by the deployment ``operator-alerts/on-event`` (``prefect.yaml``), whose triggers fire on
``prefect.flow-run.Failed`` / ``TimedOut`` / ``Crashed`` of the consentflow flows and on the
events ``consentflow.delivery.dead_lettered`` / ``consentflow.endpoint.failing``; the trigger
fills the parameters from the event (event name, resource, run id, flow, state, state message).
An operator may also start it by hand with no parameters (event ``consentflow.alert.test``) to
check the channels.

What one run does:

* sends one alert to every Apprise URL in ``CONSENTFLOW_ALERT_URLS`` (each URL on its own, so one
  broken channel does not hide the others) and by email to ``CONSENTFLOW_COMPLIANCE_EMAIL``
  (``flows.channels``, shared with ``compliance-digest``);
* for a ``Crashed`` run of a consentflow flow, records the crash in the audit trail
  (``consentflow.runs.record_crashed``: a ``flow.run`` entry with outcome ``crashed``, only if
  the run left no end entry of its own);
* appends one audit entry ``alert.sent`` with the outcome per channel.

An endpoint's failing spell (every attempt since its last success failed) alerts once: the
propagate flow raises ``consentflow.endpoint.failing`` after every run while it lasts, and a
spell already alerted (its key in an ``alert.sent`` entry) is not sent again.

Invariants: alerts, logs and the audit entry name events, flows, runs and systems, never people,
addresses or secrets; an Apprise URL (which may carry a token) is never logged or recorded, only
its scheme. Failure modes: a channel that refuses the alert is retried twice (``send_task``);
if every configured channel still fails, the run ends Failed after recording its audit entry
(operator-alerts is not among the flows whose failures trigger alerts, so it cannot loop). With
no channel configured the run completes with a warning and outcome ``unconfigured``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from consentflow import audit, db, runs
from consentflow.delivery.events import ENDPOINT_FAILING
from consentflow.models import ActorType, Channel, utcnow
from consentflow.reports import digest
from consentflow.settings import get_settings
from flows import channels
from flows.channels import alert_urls, scheme, send_apprise, send_email

__all__ = ["alert_urls", "operator_alerts", "scheme", "send_apprise", "send_email"]

FLOW = "operator-alerts"


#: A flow run id as the trigger passes it: a UUID, or Prefect's resource id for it.
_HEX = "[0-9a-fA-F]"
RUN_ID = rf"^((prefect\.flow-run\.)?{_HEX}{{8}}(-{_HEX}{{4}}){{3}}-{_HEX}{{12}})?$"
#: The event of a run started by hand to check the channels.
TEST_EVENT = "consentflow.alert.test"
#: The most of a state message an alert quotes.
MESSAGE_MAX = 500


@dataclass
class AlertReport:
    """What one alert run did: the outcome per channel (``apprise:<scheme>#<n>``, ``email``)."""

    title: str
    channels: dict[str, str] = field(default_factory=dict)
    crash_recorded: bool = False
    already_alerted: bool = False

    @property
    def outcome(self) -> str:
        return "already alerted" if self.already_alerted else channels.outcome(self.channels)

    def result(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "outcome": self.outcome,
            "channels": self.channels,
            "crash_recorded": self.crash_recorded,
        }


def ui_link(run_id: str) -> str | None:
    """The Prefect UI page of a flow run, when a UI URL is configured."""
    from prefect.settings import PREFECT_UI_URL

    ui = get_settings().prefect_ui_url or PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui and run_id else None


def compose(event: str, resource: str, run_id: str, flow: str, state: str, message: str) -> str:
    """The alert's text: one line per fact, the state message last (cut at ``MESSAGE_MAX``)."""
    lines = [f"Event: {event}"]
    if resource:
        lines.append(f"Resource: {resource}")
    if flow:
        lines.append(f"Flow: {flow}")
    if run_id:
        lines.append(f"Flow run: {run_id}")
    if state:
        lines.append(f"State: {state}")
    link = ui_link(run_id)
    if link:
        lines.append(f"In Prefect: {link}")
    if message:
        cut = message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"
        lines.append(f"Message: {cut}")
    return "\n".join(lines) + "\n"


def title_for(event: str, resource: str, flow: str, state: str) -> str:
    """A subject line that says what happened: ``consentflow: propagate run Crashed``."""
    system = resource.removeprefix("consentflow.endpoint.")
    if event == TEST_EVENT:
        return "consentflow: test alert (the alert channels work)"
    if event == "consentflow.delivery.dead_lettered":
        return f"consentflow: deliveries dead-lettered at endpoint {system}"
    if event == ENDPOINT_FAILING:
        return f"consentflow: endpoint {system} is failing"
    what = state or event.rsplit(".", 1)[-1]
    return f"consentflow: {flow or 'flow'} run {what}"


#: The tasks a run uses, which tests may swap (e.g. for copies without retry delays).
apprise_task = send_apprise
email_task = send_email


def deliver(title: str, body: str) -> dict[str, str]:
    """Send to every channel configured (``flows.channels.deliver``, with this module's tasks);
    the outcome per channel (``sent`` / ``failed``)."""
    return channels.deliver(title, body, apprise_task=apprise_task, email_task=email_task)


def record(report: AlertReport, facts: dict[str, str]) -> None:
    """The run's audit entry ``alert.sent``: the facts alerted about and each channel's outcome
    (channel names carry only a scheme, never a URL or an address)."""
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
                **facts,
                "outcome": report.outcome,
                "channels": report.channels,
                "crash_recorded": report.crash_recorded,
            },
        )


def spell_key(event: str, resource: str) -> str | None:
    """For ``consentflow.endpoint.failing``: the key of the endpoint's failing spell (every
    attempt since its last success failed; ``reports.digest.failing_systems``), so that one
    spell alerts once however many propagate runs report it; None for other events or an
    endpoint not failing in the ledger's record (then the alert is sent)."""
    if event != ENDPOINT_FAILING:
        return None
    system = resource.removeprefix("consentflow.endpoint.")
    with db.session_scope() as session:
        spell = digest.failing_systems(session, utcnow(), longer_than=timedelta(0)).get(system)
    return f"endpoint-failing:{system}:{spell.isoformat()}" if spell else None


def already_alerted(key: str) -> bool:
    """Whether an ``alert.sent`` entry of the last 60 days holds ``key`` and reached a channel."""
    with db.session_scope() as session:
        return key in digest.alerted(session, utcnow() - timedelta(days=60))


def record_crash(run_id: str, flow: str, message: str) -> bool:
    """Record a Crashed consentflow run that left no end entry (``runs.record_crashed``)."""
    if not run_id or flow not in runs.flow_names():
        return False
    reason = (message or "marked Crashed by Prefect")[:MESSAGE_MAX]
    with db.session_scope() as session:
        return bool(runs.record_crashed(session, run_id, flow, reason))


@flow(name=FLOW, timeout_seconds=300, log_prints=False)
def operator_alerts(
    event: Annotated[
        str,
        Field(
            title="Event",
            min_length=1,
            max_length=200,
            description="What happened: the Prefect event's name, e.g. prefect.flow-run.Crashed "
            f"or consentflow.delivery.dead_lettered; {TEST_EVENT} (the default) sends a test "
            "alert.",
        ),
    ] = TEST_EVENT,
    resource: Annotated[
        str,
        Field(
            title="Resource",
            max_length=300,
            description="The event's resource, e.g. consentflow.endpoint.crm or "
            "prefect.flow-run.<id>.",
        ),
    ] = "",
    run_id: Annotated[
        str,
        Field(
            title="Flow run",
            pattern=RUN_ID,
            description="The flow run concerned (its id, or prefect.flow-run.<id>); empty if none.",
        ),
    ] = "",
    flow: Annotated[
        str,
        Field(title="Flow", max_length=200, description="The flow concerned, e.g. propagate."),
    ] = "",
    state: Annotated[
        str,
        Field(
            title="State",
            max_length=100,
            description="The run's final state (Failed, Crashed); empty for other events.",
        ),
    ] = "",
    message: Annotated[
        str,
        Field(
            title="Message",
            max_length=5000,
            description="The state message, quoted in the alert (cut at 500 characters), "
            "never recorded in the audit trail.",
        ),
    ] = "",
) -> dict[str, Any]:
    """Send one alert to every configured channel and record it; record a crashed run."""
    run_id = run_id.removeprefix("prefect.flow-run.").lower()
    title = title_for(event, resource, flow, state)
    report = AlertReport(title=title)
    if state == "Crashed":
        report.crash_recorded = record_crash(run_id, flow, message)
    key = spell_key(event, resource)
    if key and already_alerted(key):
        get_run_logger().info("this failing spell was already alerted: %s", key)
        report.already_alerted = True
        return report.result()
    report.channels = deliver(title, compose(event, resource, run_id, flow, state, message))
    if report.outcome == "unconfigured":
        get_run_logger().warning(
            "no alert channel configured: set CONSENTFLOW_ALERT_URLS or "
            "CONSENTFLOW_COMPLIANCE_EMAIL on the worker"
        )
    facts = {"event": event, "resource": resource, "flow": flow, "state": state}
    record(report, {**facts, "about_run": run_id, **({"key": key} if key else {})})
    if report.outcome == "failed":
        raise RuntimeError(f"alert not delivered on any channel: {', '.join(report.channels)}")
    return report.result()

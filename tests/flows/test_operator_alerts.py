"""The operator-alerts flow, run for real: Prefect's test harness, both databases, a real Apprise
``json://`` URL pointed at a loopback HTTP receiver and a real SMTP server (aiosmtpd).

What an operator relies on: one alert per configured channel, saying what happened and where; a
broken channel does not hide the others, and when every channel fails the run says so (Failed);
the audit entry ``alert.sent`` names channels by scheme only (no URL, no address); a crashed run
that left no end entry is recorded as crashed, once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from prefect.exceptions import ParameterTypeError

import flows.operator_alerts as alerts_flow
from consentflow import db, runs, settings
from consentflow.runs import RunSummary
from tests.support.net import free_port
from tests.support.seeding import audit_entries, verify_audit
from tests.support.smtp import SmtpSink
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.usefixtures("prefect_harness")

OPS = "ops@example.org"


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's send tasks without retries, so a refusing channel fails at once."""
    monkeypatch.setattr(
        alerts_flow, "apprise_task", alerts_flow.send_apprise.with_options(retries=0)
    )
    monkeypatch.setattr(alerts_flow, "email_task", alerts_flow.send_email.with_options(retries=0))


@pytest.fixture
def channels(
    engine, smtp_sink: SmtpSink, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SmtpSink, Receiver]]:  # type: ignore[no-untyped-def]
    """Two Apprise URLs (both on the loopback receiver) and the compliance email, configured."""
    urls = f"json://127.0.0.1:{receiver.port}/hook-a, json://127.0.0.1:{receiver.port}/hook-b"
    monkeypatch.setenv("CONSENTFLOW_ALERT_URLS", urls)
    monkeypatch.setenv("CONSENTFLOW_COMPLIANCE_EMAIL", OPS)
    monkeypatch.setenv("CONSENTFLOW_PREFECT_UI_URL", "http://prefect.internal:4200")
    settings.get_settings.cache_clear()
    yield smtp_sink, receiver
    settings.get_settings.cache_clear()


def _posted(receiver: Receiver, path: str) -> list[dict[str, str]]:
    return [json.loads(r.body) for r in receiver.at(path)]


def test_a_dead_letter_alert_reaches_every_channel_and_is_audited(engine, channels) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    run = str(uuid.uuid4())
    result = alerts_flow.operator_alerts(
        event="consentflow.delivery.dead_lettered",
        resource="consentflow.endpoint.crm",
        run_id=f"prefect.flow-run.{run}",
        flow="propagate",
    )
    assert result["outcome"] == "sent"
    for path in ("/hook-a", "/hook-b"):
        (posted,) = _posted(receiver, path)
        assert posted["title"] == "consentflow: deliveries dead-lettered at endpoint crm"
        assert "Resource: consentflow.endpoint.crm" in posted["message"]
        assert f"Flow run: {run}" in posted["message"]
        assert f"http://prefect.internal:4200/runs/flow-run/{run}" in posted["message"]
    (mail,) = sink.to(OPS)
    assert mail.message["Subject"] == "consentflow: deliveries dead-lettered at endpoint crm"
    assert "Event: consentflow.delivery.dead_lettered" in mail.part("plain")

    (entry,) = audit_entries(engine, "alert.sent")
    assert entry.detail["outcome"] == "sent"
    assert entry.detail["about_run"] == run
    assert entry.detail["channels"] == {
        "apprise:json#1": "sent",
        "apprise:json#2": "sent",
        "email": "sent",
    }
    recorded = json.dumps(entry.detail)
    assert OPS not in recorded and "127.0.0.1" not in recorded  # no address, no URL
    verify_audit(engine)


@pytest.mark.usefixtures("no_retries")
def test_a_refusing_channel_does_not_hide_the_others(engine, channels) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    receiver.set("/hook-a", 500)
    result = alerts_flow.operator_alerts(
        event="consentflow.endpoint.failing", resource="consentflow.endpoint.ads"
    )
    assert result["outcome"] == "sent"
    assert result["channels"] == {
        "apprise:json#1": "failed",
        "apprise:json#2": "sent",
        "email": "sent",
    }
    (posted,) = _posted(receiver, "/hook-b")
    assert posted["title"] == "consentflow: endpoint ads is failing"
    assert len(sink.to(OPS)) == 1


@pytest.mark.usefixtures("no_retries")
def test_when_every_channel_fails_the_run_fails_and_says_so(
    engine, channels, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _, receiver = channels
    receiver.set("/hook-a", 503)
    receiver.set("/hook-b", 503)
    monkeypatch.setenv("CONSENTFLOW_SMTP_PORT", str(free_port()))  # nothing listens there
    settings.get_settings.cache_clear()
    state = alerts_flow.operator_alerts(
        event="prefect.flow-run.Failed",
        resource="prefect.flow-run.x",
        flow="expiry-sweep",
        state="Failed",
        return_state=True,
    )
    assert state.is_failed()
    assert "alert not delivered on any channel" in (state.message or "")
    (entry,) = audit_entries(engine, "alert.sent")
    assert entry.detail["outcome"] == "failed"
    assert set(entry.detail["channels"].values()) == {"failed"}


def test_with_no_channel_configured_the_run_completes_and_records_it(engine) -> None:  # type: ignore[no-untyped-def]
    result = alerts_flow.operator_alerts(event="prefect.flow-run.Failed", flow="reconsent")
    assert result["outcome"] == "unconfigured"
    (entry,) = audit_entries(engine, "alert.sent")
    assert entry.detail["channels"] == {}


def test_a_crashed_run_without_an_end_entry_is_recorded_once(engine, channels) -> None:  # type: ignore[no-untyped-def]
    crashed, finished = str(uuid.uuid4()), str(uuid.uuid4())
    with db.session_scope(engine) as s:  # this run ended normally and recorded itself
        runs.record_run(s, RunSummary(flow="propagate", parameters={}, run_id=finished), "failed")

    def alert(run_id: str) -> dict[str, object]:
        return alerts_flow.operator_alerts(
            event="prefect.flow-run.Crashed",
            resource=f"prefect.flow-run.{run_id}",
            run_id=run_id,
            flow="propagate",
            state="Crashed",
            message="Flow run marked as crashed due to missing heartbeats.",
        )

    assert alert(crashed)["crash_recorded"] is True
    assert alert(crashed)["crash_recorded"] is False  # a second alert records nothing more
    assert alert(finished)["crash_recorded"] is False
    ends = [e for e in audit_entries(engine, "flow.run") if e.run_id == crashed]
    assert [e.detail["outcome"] for e in ends] == ["crashed"]
    assert len([e for e in audit_entries(engine, "flow.run") if e.run_id == finished]) == 1
    verify_audit(engine)


def test_a_malformed_run_id_is_refused_before_the_run(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterTypeError, match="run_id"):
        alerts_flow.operator_alerts(event="prefect.flow-run.Failed", run_id="not-a-run")
    assert audit_entries(engine, "alert.sent") == []

"""The compliance-digest flow, run for real: Prefect's test harness, both databases, a real SMTP
server (aiosmtpd) and a real Apprise ``json://`` URL pointed at a loopback HTTP receiver.

What compliance relies on: the digest arrives on every channel with the period's counts (lapsed
consents and requests, re-consent deadlines with how many are unanswered, dead letters, a system
failing for more than an hour) and links to the workspace lists, never a person's address; it
is a Prefect artifact and an audit entry; a second run for the same period sends nothing, and a
channel that failed gets it on the re-run without the others getting it twice. The immediate
alerts (a system failing for more than an hour, a failed audit verification) go out once each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlalchemy import update
from sqlmodel import col, select

import flows.compliance_digest as digest_flow
from consentflow import audit, db, lifecycle, purposes, settings, sweeps, systems, tokens
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    AuditEntry,
    Channel,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    RequestKind,
    RequestStatus,
    utcnow,
)
from tests.support.seeding import audit_entries, give, seed_subjects
from tests.support.smtp import SmtpSink
from tests.support.web import client, every_row
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.usefixtures("prefect_harness")

OPS = "ops@example.org"
DAY = timedelta(days=1)


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's send tasks without retries, so a refusing channel fails at once."""
    monkeypatch.setattr(
        digest_flow, "apprise_task", digest_flow.channels.send_apprise.with_options(retries=0)
    )
    monkeypatch.setattr(
        digest_flow, "email_task", digest_flow.channels.send_email.with_options(retries=0)
    )


@pytest.fixture
def channels(
    engine, smtp_sink: SmtpSink, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SmtpSink, Receiver]]:  # type: ignore[no-untyped-def]
    """Two Apprise URLs (both on the loopback receiver) and the compliance email, configured."""
    urls = f"json://127.0.0.1:{receiver.port}/hook-a, json://127.0.0.1:{receiver.port}/hook-b"
    monkeypatch.setenv("CONSENTFLOW_ALERT_URLS", urls)
    monkeypatch.setenv("CONSENTFLOW_COMPLIANCE_EMAIL", OPS)
    settings.get_settings.cache_clear()
    yield smtp_sink, receiver
    settings.get_settings.cache_clear()


@pytest.fixture
def world(engine):  # type: ignore[no-untyped-def]
    """A day to report: 3 news consents expired (by the expiry sweep), 1 collection
    request lapsed, 2 profiling re-consent requests due in 3 days (1 still unanswered), 2
    deliveries to crm dead-lettered and every attempt at crm failing for 2 hours."""
    now = utcnow()
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        purposes.add(s, "profiling", title="Profiling", validity_days=365)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/h")
    ids = seed_subjects(engine, 8)
    give(engine, ids[:3], "news", [now - (i + 1) * DAY for i in range(3)])
    ctx = sweeps.SweepContext(as_of=now, engine=engine)
    batches = sweeps.drain(lambda n, cursor: sweeps.expire_batch(ctx, n, cursor), batch_size=10)
    assert sum(b.counts[("news", "expired")] for b in batches) == 3
    with db.session_scope(engine) as s:
        for name in ("p5", "p6", "p7"):
            lifecycle.request(s, name, "news" if name == "p5" else "profiling", Actor())
        reqs = {r.subject_id: r.id for r in s.exec(select(ConsentRequest)).all()}
        s.exec(
            update(ConsentRequest)
            .where(col(ConsentRequest.id) == reqs[ids[5]])
            .values(status=RequestStatus.LAPSED.value, closed_at=now - timedelta(hours=1))
        )
        s.exec(
            update(ConsentRequest)
            .where(col(ConsentRequest.id).in_([reqs[ids[6]], reqs[ids[7]]]))
            .values(kind=RequestKind.RECONSENT.value, deadline=now + 3 * DAY)
        )
        s.exec(
            update(ConsentRequest)
            .where(col(ConsentRequest.id) == reqs[ids[7]])
            .values(status=RequestStatus.ANSWERED.value, closed_at=now)
        )
        deliveries = s.exec(select(Delivery).order_by(col(Delivery.id))).all()
        assert len(deliveries) == 3  # the expiries' webhooks to crm
        for n, delivery in enumerate(deliveries):
            for hours in (2, 1):
                s.add(
                    DeliveryAttempt(
                        delivery_id=delivery.id,
                        attempt=3 - hours,
                        started_at=now - timedelta(hours=hours),
                        status_code=500,
                    )
                )
            if n == 2:
                continue  # still pending
            delivery.state, delivery.attempts = "dead", 8
            audit.record(
                s,
                "delivery.dead_lettered",
                actor_type=ActorType.SYSTEM.value,
                actor="crm",
                channel=Channel.SYSTEM.value,
                detail={"delivery_id": delivery.id, "system": "crm", "attempts": 8},
            )
    return engine


def _posted(receiver: Receiver, path: str) -> list[dict[str, str]]:
    return [json.loads(r.body) for r in receiver.at(path)]


def _artifacts(run_id: str) -> list[object]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def test_the_digest_reaches_every_channel_once_with_the_counts(world, channels) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    with db.session_scope(world) as s:
        admin = tokens.create(s, "ada", "admin")[1]
    result = digest_flow.compliance_digest()
    assert result["outcome"] == "sent"
    assert result["counts"] == {
        "lapsed": 4,
        "deadlines": 1,
        "dead_letters": 2,
        "failing": 1,
        "anomalies": 0,
        "audit": 0,
    }
    (mail,) = sink.to(OPS)
    text = mail.part("plain")
    for path in ("/hook-a", "/hook-b"):
        (posted,) = _posted(receiver, path)
        assert posted["title"] == mail.message["Subject"]
        assert posted["message"].splitlines() == text.splitlines()
    assert "needs attention" in mail.message["Subject"]
    assert "consents expired (news): 3" in text
    assert "requests lapsed unanswered (news): 1" in text
    assert "re-consent requests still unanswered (profiling): 1, of 2 due by" in text
    assert "deliveries dead-lettered (crm): 2" in text
    assert "/lists/deliveries?system=crm&status=dead" in text
    assert "Systems failing for more than an hour: 1" in text
    assert "Audit verification: passed" in text
    # Every linked number leads to a list of exactly that many rows.
    linked = re.findall(r": (\d+)[^\n]*  https://consent\.example\.org(/lists/\S+)", text)
    assert len(linked) >= 4, text
    with client() as c:
        for count, href in linked:
            url = urlsplit(href)
            got = every_row(
                c, url.path.removeprefix("/lists/"), admin, **dict(parse_qsl(url.query))
            )
            assert len(got) == int(count), href
    everything = text + json.dumps([r.body.decode() for r in receiver.requests])
    assert "example.com" not in everything  # no subject's address anywhere

    (entry,) = audit_entries(world, "compliance.digest")
    assert entry.detail["counts"] == result["counts"]
    assert entry.detail["channels"] == {
        "apprise:json#1": "sent",
        "apprise:json#2": "sent",
        "email": "sent",
    }
    assert OPS not in json.dumps(entry.detail) and "127.0.0.1" not in json.dumps(entry.detail)
    (artifact,) = [a for a in _artifacts(entry.run_id or "") if a.key == "compliance-digest"]  # type: ignore[attr-defined]
    assert "Dead-lettered deliveries: 2" in str(artifact.data)  # type: ignore[attr-defined]

    again = digest_flow.compliance_digest()  # the same day: nothing is sent again
    assert again["outcome"] == "already sent"
    assert len(sink.to(OPS)) == 1 and len(receiver.requests) == 2
    assert len(audit_entries(world, "compliance.digest")) == 1


@pytest.mark.usefixtures("no_retries")
def test_a_failing_channel_does_not_hide_the_others_and_gets_it_on_the_rerun(
    world, channels
) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    receiver.set("/hook-a", 500)
    first = digest_flow.compliance_digest()
    assert first["channels"] == {
        "apprise:json#1": "failed",
        "apprise:json#2": "sent",
        "email": "sent",
    }
    receiver.set("/hook-a", 200)
    rerun = digest_flow.compliance_digest()
    assert rerun["channels"] == {"apprise:json#1": "sent"}
    assert rerun["counts"] == first["counts"]  # the same period again
    assert len(_posted(receiver, "/hook-a")) == 2  # one refused, one taken
    assert len(_posted(receiver, "/hook-b")) == 1 and len(sink.to(OPS)) == 1
    entries = audit_entries(world, "compliance.digest")
    assert [e.detail["period"] for e in entries] == [first["period"]] * 2


def test_a_dry_run_publishes_the_artifact_and_sends_nothing(world, channels) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    state = digest_flow.compliance_digest(dry_run=True, return_state=True)
    result = state.result()
    assert result["outcome"] == "dry run" and result["counts"]["lapsed"] == 4
    assert sink.received == [] and receiver.requests == []
    assert audit_entries(world, "compliance.digest") == []
    artifacts = _artifacts(str(state.state_details.flow_run_id))
    (artifact,) = [a for a in artifacts if a.key == "compliance-digest"]  # type: ignore[attr-defined]
    assert "Consents that lapsed: 4" in str(artifact.data)  # type: ignore[attr-defined]


def test_immediate_alerts_go_out_once_each(world, channels) -> None:  # type: ignore[no-untyped-def]
    sink, receiver = channels
    result = digest_flow.compliance_digest(alerts_only=True)
    (key,) = result["alerts"]
    assert key.startswith("system-failing:crm:") and result["alerts"][key] == "sent"
    (posted,) = _posted(receiver, "/hook-a")
    assert posted["title"] == "consentflow: endpoint crm failing for more than an hour"
    (mail,) = sink.to(OPS)
    assert "/lists/deliveries?system=crm&status=undelivered" in mail.part("plain")
    (entry,) = audit_entries(world, "alert.sent")
    assert entry.detail["key"] == key and entry.actor == "compliance-digest"

    assert digest_flow.compliance_digest(alerts_only=True)["alerts"] == {}  # once
    assert len(sink.to(OPS)) == 1

    with db.session_scope(world) as s:  # someone edits the audit trail
        s.exec(update(AuditEntry).where(col(AuditEntry.seq) == 2).values(actor="edited"))
    alerts = digest_flow.compliance_digest(alerts_only=True)["alerts"]
    assert list(alerts) == ["audit-verify-failed:entry-2"]
    assert sink.to(OPS)[-1].message["Subject"] == "consentflow: audit verification FAILED"
    assert digest_flow.compliance_digest(alerts_only=True)["alerts"] == {}


def test_a_failing_spell_alerts_once_through_operator_alerts(world, channels) -> None:  # type: ignore[no-untyped-def]
    import flows.operator_alerts as alerts_flow

    sink, _ = channels

    def failing() -> dict[str, object]:
        return alerts_flow.operator_alerts(
            event="consentflow.endpoint.failing", resource="consentflow.endpoint.crm"
        )

    assert failing()["outcome"] == "sent"
    assert failing()["outcome"] == "already alerted"  # the next propagate run's event
    assert len(sink.to(OPS)) == 1
    (entry,) = audit_entries(world, "alert.sent")
    assert entry.detail["key"].startswith("endpoint-failing:crm:")

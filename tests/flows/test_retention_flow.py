"""The retention-sweep flow runs for real (Prefect's test harness, both databases). What it prunes
is tested through the plain functions in tests/sweeps/test_retention.py; this checks what only a
real run shows: the run's retention.swept entry with its counts and run id,
the end entry and artifact, the dry run, and the refusal on a broken record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlalchemy import update
from sqlmodel import col, select

import flows.retention_sweep as retention_flow
from consentflow import db, lifecycle, purposes, settings, systems, tokens
from consentflow.errors import Conflict, InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import (
    ConsentEvent,
    Delivery,
    DeliveryAttempt,
    EmailMessage,
    Subject,
    WebSession,
    utcnow,
)
from consentflow.sweeps import retention
from tests.support.seeding import audit_entries, row_counts, seed_subjects

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = timedelta(days=1)


@pytest.fixture
def aged(engine, monkeypatch):  # type: ignore[no-untyped-def]
    """Three ended sessions, three attempt logs of a delivered webhook and one sent email, all
    past their retention; a live session and a claimed email that stay."""
    for kind, days in {"sessions": 1, "attempts": 30, "emails": 60, "requests": 90}.items():
        monkeypatch.setenv(f"CONSENTFLOW_RETENTION_{kind.upper()}_DAYS", str(days))
    monkeypatch.setenv("CONSENTFLOW_RETENTION_EVIDENCE_DAYS", "365")
    settings.get_settings.cache_clear()
    long_ago = utcnow() - 400 * DAY
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hooks")
    seed_subjects(engine, 1)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "p0", "news", Actor(evidence={"ip": "192.0.2.7"}))
        lifecycle.revoke(s, "p0", "news", Actor())
        s.execute(update(Delivery).values(state="delivered", delivered_at=long_ago))
        [delivery] = s.exec(select(Delivery.id)).all()
        [subject] = s.exec(select(Subject.id)).all()
        token, _ = tokens.create(s, "ops", "admin")
        s.add_all(
            DeliveryAttempt(delivery_id=delivery, attempt=n, started_at=long_ago) for n in (1, 2, 3)
        )
        s.add_all(
            WebSession(id_hash=f"{n:064d}", token_id=token.id, expires_at=long_ago + n * DAY)
            for n in range(4)
        )
        s.execute(update(WebSession).where(col(WebSession.id_hash) == f"{3:064d}").values(
            expires_at=utcnow() + DAY))  # fmt: skip
        for n, status in enumerate(("sent", "claimed")):
            s.add(EmailMessage(message_id=f"<m{n}@t>", subject_id=subject, kind="preference_link",
                               status=status, created_at=long_ago))  # fmt: skip
    yield engine
    settings.get_settings.cache_clear()


def _artifacts(run_id: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def test_a_run_prunes_in_batches_and_audits_its_counts(aged) -> None:  # type: ignore[no-untyped-def]
    before = row_counts(aged)
    preview = retention_flow.retention_sweep(dry_run=True)
    assert preview.outcome == "completed" and row_counts(aged) == before | {
        "audit_entry": before["audit_entry"] + 1
    }
    expected = {"sessions_pruned": 3, "attempts_pruned": 3, "emails_pruned": 1}
    assert {o: n for (_, o), n in preview.counts.items()} == expected
    assert audit_entries(aged, retention.ACTION) == []  # a dry run prunes nothing

    summary = retention_flow.retention_sweep(batch_size=2)
    assert summary.outcome == "completed" and summary.run_id
    assert {o: n for (_, o), n in summary.counts.items()} == expected
    [entry] = audit_entries(aged, retention.ACTION)
    assert entry.run_id == summary.run_id and entry.actor_type == "system"
    assert entry.detail["counts"] == {
        "sessions": 3, "attempts": 3, "evidence": 0, "emails": 1, "requests": 0
    }  # fmt: skip
    assert entry.detail["days"]["emails"] == 60 and "evidence_before" not in entry.detail
    [run] = [e for e in audit_entries(aged, "flow.run") if e.run_id == summary.run_id]
    assert run.actor == "retention-sweep" and run.detail["outcome"] == "completed"
    assert run.detail["parameters"]["batch_size"] == 2 and run.seq > entry.seq
    [artifact] = _artifacts(summary.run_id)
    assert artifact.key == "retention-sweep-summary" and "sessions_pruned" in str(artifact.data)
    with db.session_scope(aged, readonly=True) as s:
        assert s.exec(select(EmailMessage.status)).all() == ["claimed"]
        assert len(s.exec(select(WebSession.id)).all()) == 1
        assert s.exec(select(ConsentEvent.evidence).where(ConsentEvent.action == "grant")).one()


def test_a_broken_record_or_a_future_instant_is_refused(aged) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="only a dry run may look ahead"):
        retention_flow.retention_sweep(as_of=utcnow() + DAY)
    with db.session_scope(aged) as s:
        s.execute(update(ConsentEvent).values(reason="edited behind consentflow's back"))
    before = row_counts(aged)
    with pytest.raises(Conflict, match="refusing to apply retention: audit verify fails"):
        retention_flow.retention_sweep()
    [run] = audit_entries(aged, "flow.run")
    assert run.detail["outcome"] == "failed"
    assert row_counts(aged) == before | {"audit_entry": before["audit_entry"] + 1}
    assert audit_entries(aged, retention.ACTION) == []

"""The four lifecycle flows run for real: Prefect's test harness (started once), both databases,
a real SMTP server on loopback. The logic itself is tested through the plain functions in
tests/sweeps/; these check what only a real run shows: run ids in every audit entry, the
per-run entry and artifact, failure and resume, retries, dry runs and the CLI (the demo:
tests/cli/test_demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import col, select

import flows.collection_followups as followups_flow
import flows.expiry_sweep as expiry_flow
import flows.reconsent as reconsent_flow
import flows.renewal_reminders as reminders_flow
from consentflow import db, lifecycle, purposes, runs, sweeps, systems
from consentflow.errors import InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import Consent, ConsentEvent, ConsentRequest, State, utcnow
from tests.support.cli import fresh_machine, left_behind
from tests.support.net import free_port
from tests.support.seeding import (
    audit_entries,
    count,
    give,
    row_counts,
    seed_subjects,
    verify_audit,
)
from tests.support.smtp import SmtpSink, use_smtp

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = timedelta(days=1)


@pytest.fixture
def world(engine):  # type: ignore[no-untyped-def]
    """Something due for every flow: 6 news consents ended, 3 ending within a week, 2 requests
    unanswered for 8 days, 4 profiling consents on a version a material revision superseded."""
    now = utcnow()
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        purposes.add(s, "profiling", title="Profiling", validity_days=365)
        systems.add(s, "crm", ["news", "profiling"], webhook_url="https://crm.example.com/h")
    ids = seed_subjects(engine, 12)
    give(engine, ids[:6], "news", [now - (i + 1) * DAY for i in range(6)])
    give(engine, ids[6:9], "news", now + 5 * DAY)
    give(engine, ids[:4], "profiling", now + 100 * DAY)
    with db.session_scope(engine) as s:
        for name in ("p10", "p11"):
            lifecycle.request(s, name, "news", Actor())
        s.exec(update(ConsentRequest).values(requested_at=now - 8 * DAY))
        purposes.revise(s, "profiling", material=True, title="Profiling with partners")
    return engine


def _artifacts(run_id: str) -> list[object]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def test_expiry_sweep_audits_each_item_and_the_run(world) -> None:  # type: ignore[no-untyped-def]
    summary = expiry_flow.expiry_sweep(batch_size=4)
    assert summary.outcome == "completed" and summary.run_id
    assert summary.total("expired") == 6 and summary.total("webhooks_enqueued") == 6
    items = audit_entries(world, "consent.expire")
    assert len(items) == 6 and {e.run_id for e in items} == {summary.run_id}
    [run] = audit_entries(world, "flow.run")
    assert run.run_id == summary.run_id and run.actor == "expiry-sweep"
    assert run.detail["outcome"] == "completed" and run.detail["parameters"]["batch_size"] == 4
    assert run.detail["counts"] == [
        {"purpose": "news", "outcome": "expired", "count": 6},
        {"purpose": "news", "outcome": "webhooks_enqueued", "count": 6},
    ]
    [artifact] = _artifacts(summary.run_id)
    assert artifact.key == "expiry-sweep-summary"  # type: ignore[attr-defined]
    assert "expired" in str(artifact.data)  # type: ignore[attr-defined]
    verify_audit(world)


def test_crash_mid_sweep_then_rerun(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = sweeps.expire_batch
    calls: list[int] = []

    def dies_in_batch_3(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker lost in batch 3")
        return real(*args)

    monkeypatch.setattr(sweeps, "expire_batch", dies_in_batch_3)
    with pytest.raises(RuntimeError, match="batch 3"):
        expiry_flow.expiry_sweep(batch_size=2)
    assert len(calls) == 3  # not retried: only transient failures are
    [failed] = audit_entries(world, "flow.run")
    assert failed.detail["outcome"] == "failed"
    assert count(world, Consent, Consent.state == State.EXPIRED.value) == 4
    monkeypatch.setattr(sweeps, "expire_batch", real)

    rerun = expiry_flow.expiry_sweep(batch_size=2)
    assert rerun.total("expired") == 2
    with db.session_scope(world) as s:
        events = s.exec(select(ConsentEvent).where(ConsentEvent.action == "expire")).all()
    assert len(events) == 6 and len({(e.subject_id, e.purpose_id) for e in events}) == 6
    assert {e.run_id for e in events} == {failed.run_id, rerun.run_id}
    verify_audit(world)


def test_a_transient_failure_is_retried(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = sweeps.expire_batch
    calls: list[int] = []

    def hiccup(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE", {}, Exception("could not serialize access"))
        return real(*args)

    monkeypatch.setattr(sweeps, "expire_batch", hiccup)
    monkeypatch.setattr(
        expiry_flow, "batch_task", expiry_flow.batch_task.with_options(retry_delay_seconds=0)
    )
    summary = expiry_flow.expiry_sweep()
    assert summary.outcome == "completed" and summary.total("expired") == 6
    assert len(calls) == 3  # failed, retried, then the empty batch that ends the loop


def test_dry_runs_change_nothing_but_one_audit_entry(world) -> None:  # type: ignore[no-untyped-def]
    runs = [
        expiry_flow.expiry_sweep,
        reminders_flow.renewal_reminders,
        followups_flow.collection_followups,
        reconsent_flow.reconsent,
    ]
    expected = [
        {("news", "expired"): 6, ("news", "webhooks_enqueued"): 6},
        {("news", "sent"): 3},
        {("news", "sent"): 2},
        {("profiling", "requested"): 4, ("profiling", "sent"): 4},
    ]
    for flow_fn, counts in zip(runs, expected, strict=True):
        before = row_counts(world)
        summary = flow_fn(dry_run=True)
        after = row_counts(world)
        assert summary.dry_run and summary.outcome == "completed"
        assert summary.counts == counts
        assert after["audit_entry"] == before["audit_entry"] + 1
        before["audit_entry"] = after["audit_entry"]
        assert after == before
        last = audit_entries(world)[-1]
        assert last.action == "flow.dry_run" and last.run_id == summary.run_id


def test_email_flows_end_to_end(world, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    smtp_sink.script("p7@example.com", "450 4.2.0 greylisted")
    first = reminders_flow.renewal_reminders()
    assert first.counts == {("news", "sent"): 2, ("news", "deferred"): 1}
    again = reminders_flow.renewal_reminders()
    assert again.counts == {("news", "sent"): 1}
    assert [len(smtp_sink.to(f"p{i}@example.com")) for i in (6, 7, 8)] == [1, 1, 1]
    entries = audit_entries(world, "email.sent")
    assert {e.run_id for e in entries} == {first.run_id, again.run_id}

    follow = followups_flow.collection_followups()
    assert follow.counts == {("news", "sent"): 2}
    recon = reconsent_flow.reconsent(batch_size=3)
    assert recon.counts == {("profiling", "requested"): 4, ("profiling", "sent"): 4}
    # A month passes: the deadlines are behind us (a flow may not act ahead of time).
    with db.session_scope(world) as s:
        s.execute(
            update(ConsentRequest)
            .where(col(ConsentRequest.kind) == "reconsent")
            .values(deadline=utcnow() - DAY)
        )
    late = reconsent_flow.reconsent()
    assert late.counts == {
        ("profiling", "invalidated"): 4,
        ("profiling", "lapsed"): 4,
        ("profiling", "webhooks_enqueued"): 4,
    }
    assert {e.run_id for e in audit_entries(world, "consent.invalidate")} == {late.run_id}
    assert len(smtp_sink.received) == 3 + 2 + 4
    assert [e.detail["outcome"] for e in audit_entries(world, "flow.run")] == ["completed"] * 5
    verify_audit(world)


def test_smtp_down_fails_the_run_cleanly(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    use_smtp(monkeypatch, free_port())
    monkeypatch.setattr(
        reminders_flow, "batch_task", reminders_flow.batch_task.with_options(retries=0)
    )
    with pytest.raises(sweeps.MailUnavailable):
        reminders_flow.renewal_reminders()
    [run] = audit_entries(world, "flow.run")
    assert run.detail["outcome"] == "failed"
    assert len(audit_entries(world, "email.deferred")) == 3
    assert audit_entries(world, "email.sent") == []
    with db.session_scope(world) as s:
        assert set(s.exec(select(Consent.reminder_stage)).all()) == {None}


def test_cli_run_that_fails_ends_in_one_line(world, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    use_smtp(monkeypatch, free_port())
    monkeypatch.setattr(
        reminders_flow, "batch_task", reminders_flow.batch_task.with_options(retries=0)
    )
    r = cli("run", "renewal-reminders", "--json")
    assert r.code == 1
    [line] = r.err.strip().splitlines()
    [run] = audit_entries(world, "flow.run")
    assert line.startswith("consentflow: renewal-reminders failed: cannot connect to the SMTP")
    assert line.endswith(f"; run {run.run_id} recorded as failed in the audit trail")
    report = json.loads(r.out)  # the summary as recorded, outcome failed
    assert report["run_id"] == run.run_id and report["outcome"] == "failed"
    assert report == run.detail
    text = cli("run", "renewal-reminders")
    assert text.code == 1 and "renewal-reminders: failed, run " in text.out
    assert "nothing to do" in text.out and text.err.count("\n") == 1


def test_only_a_dry_run_may_look_ahead(world, cli) -> None:  # type: ignore[no-untyped-def]
    ahead = (utcnow() + 31 * DAY).isoformat()
    before = row_counts(world)
    refused = cli("run", "reconsent", "--as-of", ahead)
    assert refused.code == 2 and "only a dry run may look ahead" in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.err
    assert row_counts(world) == before
    preview = cli("run", "expiry-sweep", "--dry-run", "--as-of", ahead, "--json")
    assert preview.code == 0, preview.err


def test_cli_run_expiry_sweep_json(world, cli) -> None:  # type: ignore[no-untyped-def]
    as_of = (utcnow() - 3 * DAY - timedelta(hours=1)).isoformat()
    dry = cli("run", "expiry-sweep", "--dry-run", "--as-of", as_of, "--json")
    assert dry.code == 0, dry.err
    report = json.loads(dry.out)
    assert report["dry_run"] is True and report["totals"]["expired"] == 3
    assert report["parameters"]["as_of"].startswith(as_of[:19])
    real = cli("run", "expiry-sweep", "--batch-size", "2", "--purposes", "news", "--json")
    assert real.code == 0, real.err
    report = json.loads(real.out)
    assert report["flow"] == "expiry-sweep" and report["outcome"] == "completed"
    assert report["totals"] == {"expired": 6, "webhooks_enqueued": 6}
    assert {e.run_id for e in audit_entries(world, "consent.expire")} == {report["run_id"]}
    text = cli("run", "renewal-reminders", "--dry-run", "--param", "stages=[3]")
    assert text.code == 0 and "renewal-reminders (dry run): completed" in text.out
    assert "nothing to do" in text.out  # no consent ends within 3 days
    bad = cli("run", "renewal-reminders", "--param", "stages=soon")
    assert bad.code == 2 and "stages" in bad.err


@pytest.mark.parametrize("stages", [[0], [7, -1], [], 0, "30,0", "soon"])
def test_bad_reminder_stages_are_refused_before_a_run(stages: object) -> None:
    with pytest.raises(InvalidInput, match=r"^stages: bad reminder stages"):
        runs.prepare_flow("renewal-reminders", {"stages": stages})


def test_reminder_stages_follow_the_settings_rule() -> None:
    """The parameter takes what CONSENTFLOW_REMINDER_STAGES takes (a list, or "30,7,1")."""
    for given in ([30, 7, 1], [1, 7, 7, 30], "30,7,1", 7):
        _, params = runs.prepare_flow("renewal-reminders", {"stages": given})
        assert sweeps.parse_stages(params["stages"]) == sweeps.parse_stages(
            given if not isinstance(given, int) else [given]
        )


def test_cli_refuses_bad_stages_in_one_line(world, cli) -> None:  # type: ignore[no-untyped-def]
    before = row_counts(world)
    r = cli("run", "renewal-reminders", "--param", "stages=0")
    assert r.code == 2 and "Traceback" not in r.err
    [line] = r.err.strip().splitlines()
    assert "stages" in line and "positive numbers of days" in line
    assert row_counts(world) == before  # no run started, none recorded


def test_a_failed_cli_run_shows_no_traceback(tmp_path: Path) -> None:
    """`consentflow run` as a user runs it, in its own process, when the SMTP server is down:
    one warning line (the default public URL is http), then one line saying the run failed and
    where it is recorded; the summary on stdout; no traceback from Prefect or from us."""
    url = f"sqlite:///{tmp_path / 'consentflow.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    give(engine, seed_subjects(engine, 2), "news", utcnow() + 5 * DAY)
    env = fresh_machine(tmp_path)
    env.update(
        CONSENTFLOW_DATABASE_URL=url,
        CONSENTFLOW_SMTP_HOST="127.0.0.1",
        CONSENTFLOW_SMTP_PORT=str(free_port()),
    )
    # The CLI's own entry point, with the batch task's retries off: against a server that is
    # down they would wait 10 + 60 s before failing the same way.
    script = (
        "import sys\n"
        "from consentflow.cli.run import _hermetic_prefect\n"
        "_hermetic_prefect()\n"
        "import flows.renewal_reminders as f\n"
        "f.batch_task = f.batch_task.with_options(retries=0)\n"
        "from consentflow.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "run", "renewal-reminders", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    warning, failure = result.stderr.strip().splitlines()
    assert warning.startswith("consentflow: warning: one-click unsubscribe left out")
    report = json.loads(result.stdout)
    assert report["outcome"] == "failed" and report["flow"] == "renewal-reminders"
    assert failure.startswith("consentflow: renewal-reminders failed: cannot connect to the SMTP")
    assert failure.endswith(f"; run {report['run_id']} recorded as failed in the audit trail")
    [run] = audit_entries(engine, "flow.run")
    assert run.run_id == report["run_id"] and run.detail["outcome"] == "failed"
    assert left_behind(tmp_path) == []
    engine.dispose()

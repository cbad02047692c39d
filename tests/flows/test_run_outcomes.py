"""A run's end entry agrees with Prefect's final state: cancelled is cancelled, an interruption is
crashed, never "failed"; a run that could not record its end gets one later (once); the flows'
parameter forms are flat, titled and described; a UI-started run with a bad parameter fails
fast with no audit entry. Real flow runs on the session's test server."""

from __future__ import annotations

import os
import signal
from uuid import UUID

import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.exceptions import TerminationSignal
from prefect.utilities.callables import parameter_schema

import flows.expiry_sweep as expiry_flow
from consentflow import audit, db, purposes, runs, sweeps
from consentflow.errors import InvalidInput
from consentflow.models import utcnow
from tests.support.seeding import audit_entries, give, seed_subjects

pytestmark = pytest.mark.usefixtures("prefect_harness")

LIFECYCLE = ["expiry-sweep", "renewal-reminders", "collection-followups", "reconsent"]


@pytest.fixture
def due(engine):  # type: ignore[no-untyped-def]
    """Two news consents whose validity ended."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    give(engine, seed_subjects(engine, 2), "news", utcnow().replace(year=2020))
    return engine


def _final_state(run_id: str):  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def _interrupt_with(monkeypatch, interrupt) -> None:  # type: ignore[no-untyped-def]
    def batch(*args):  # type: ignore[no-untyped-def]
        interrupt()
        raise AssertionError("not interrupted")

    monkeypatch.setattr(sweeps, "expire_batch", batch)


def test_a_cancelled_run_is_recorded_cancelled(due, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the runner does to cancel a run: say "cancel" on its control channel, then SIGTERM
    the run's process (here, this one: the flow runs in the main thread)."""
    from prefect._internal import control_listener

    def cancel() -> None:
        control_listener._set_intent("cancel")
        os.kill(os.getpid(), signal.SIGTERM)

    _interrupt_with(monkeypatch, cancel)
    try:
        with pytest.raises(TerminationSignal):
            expiry_flow.expiry_sweep()
    finally:
        control_listener._clear_intent()
    [entry] = audit_entries(due, "flow.run")
    assert entry.detail["outcome"] == "cancelled"
    assert entry.detail["reason"] == "interrupted by TerminationSignal"
    assert _final_state(entry.run_id).is_cancelled()


def test_an_interrupted_run_is_recorded_crashed(due, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def interrupt() -> None:
        raise KeyboardInterrupt

    _interrupt_with(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        expiry_flow.expiry_sweep()
    [entry] = audit_entries(due, "flow.run")
    assert entry.detail["outcome"] == "crashed"
    assert entry.detail["reason"] == "interrupted by KeyboardInterrupt"
    assert _final_state(entry.run_id).is_crashed()


def test_record_crashed_writes_one_end_entry(engine) -> None:  # type: ignore[no-untyped-def]
    """The operator-alerts flow and the hooks may both report a crash: one entry. What the
    run's flow.requested entry knew is carried over."""
    with db.session_scope(engine) as s:
        audit.record(
            s,
            runs.REQUESTED,
            actor="api:carol",
            run_id="r1",
            detail={
                "parameters": {"dry_run": True},
                "deployment": "expiry-sweep/adhoc",
                "requested_by": "api:carol",
            },
        )
    with db.session_scope(engine) as s:
        assert runs.record_crashed(s, "r1", "expiry-sweep", "Execution was aborted.\nmore")
    with db.session_scope(engine) as s:
        assert not runs.record_crashed(s, "r1", "expiry-sweep", "again")
        assert not runs.record_ended(s, "r1", "expiry-sweep", "cancelled")
    [entry] = audit_entries(engine, "flow.dry_run")
    assert entry.run_id == "r1" and entry.actor == "expiry-sweep/adhoc"
    assert (
        entry.detail["outcome"] == "crashed" and entry.detail["reason"] == "Execution was aborted."
    )
    assert entry.detail["requested_by"] == "api:carol" and entry.detail["counts"] == []
    with db.session_scope(engine) as s, pytest.raises(ValueError, match="unknown run outcome"):
        runs.record_ended(s, "r2", "expiry-sweep", "exploded")


def test_a_completed_run_gets_no_second_end_entry(due) -> None:  # type: ignore[no-untyped-def]
    summary = expiry_flow.expiry_sweep()
    assert summary.run_id
    with db.session_scope(due) as s:
        assert not runs.record_crashed(s, summary.run_id, "expiry-sweep", "late report")
    assert [e.detail["outcome"] for e in audit_entries(due, "flow.run")] == ["completed"]


def test_who_asked_comes_from_the_run_tag(due) -> None:  # type: ignore[no-untyped-def]
    with tags("requested-by:api:carol", "other"):
        asked = expiry_flow.expiry_sweep(dry_run=True)
    assert asked.requested_by == "api:carol"
    assert expiry_flow.expiry_sweep(dry_run=True).requested_by is None  # a scheduled run
    assert [e.detail["requested_by"] for e in audit_entries(due, "flow.dry_run")] == [
        "api:carol",
        None,
    ]


def test_a_bad_parameter_fails_fast_without_audit_noise(due) -> None:  # type: ignore[no-untyped-def]
    """A run started from the UI skips prepare_flow: its first step checks the same rules."""
    before = audit_entries(due)
    state = expiry_flow.expiry_sweep(purposes=["nope"], return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidInput, match="purposes: unknown purpose 'nope'"):
        state.result()
    ahead = expiry_flow.expiry_sweep(as_of=utcnow().replace(year=2999), return_state=True)
    assert ahead.is_failed() and "only a dry run may look ahead" in str(ahead.message)
    assert [e.seq for e in audit_entries(due)] == [e.seq for e in before]


@pytest.mark.parametrize("name", LIFECYCLE)
def test_parameter_forms_are_flat_titled_and_described(name: str) -> None:
    flow_fn, model = runs.load_flow(name)
    schema = parameter_schema(flow_fn).model_dump()
    assert schema["definitions"] == {}  # no nested model
    props = schema["properties"]
    assert list(props) == list(model.model_fields)
    assert {"dry_run", "as_of", "batch_size", "limit", "purposes"} <= set(props)
    for key, prop in props.items():
        assert prop["title"] != key and prop["title"][0].isupper(), key
        assert len(prop.get("description", "")) > 10, key
        assert "$ref" not in str(prop)
    assert props["dry_run"]["default"] is False
    assert isinstance(props["batch_size"]["default"], int) and props["batch_size"]["minimum"] == 1
    assert model.model_config.get("extra") == "forbid"
    assert flow_fn.timeout_seconds and flow_fn.on_crashed_hooks and flow_fn.on_cancellation_hooks

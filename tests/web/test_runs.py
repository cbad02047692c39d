"""Ad-hoc flow runs through the API: compliance starts a (dry-run) sweep from a script."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from consentflow.models import utcnow
from tests.support.seeding import audit_entries, row_counts
from tests.support.web import bearer, client, seed


@pytest.fixture
def tokens(engine):  # type: ignore[no-untyped-def]
    return seed(engine)


def _join_runs() -> None:
    """Wait for the background runs the API started (the threads it names run-FLOW)."""
    for thread in threading.enumerate():
        if thread.name.startswith("run-"):
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} did not finish"


def test_only_compliance_and_admin_may_start_runs(tokens) -> None:  # type: ignore[no-untyped-def]
    app = client()
    assert app.post("/api/v1/runs/expiry-sweep", json={}).status_code == 401
    for scope in ("support", "system"):
        answer = app.post(
            "/api/v1/runs/expiry-sweep", json={}, headers=bearer(tokens.by_scope(scope))
        )
        assert answer.status_code == 403, scope


@pytest.mark.parametrize(
    ("flow", "body", "status", "names"),
    [
        ("no-such-flow", {}, 404, "unknown flow"),
        ("expiry-sweep", {"batch_size": 0}, 422, "batch_size"),
        ("expiry-sweep", {"as_of": "not a time"}, 422, "as_of"),
        ("reconsent", {"as_of": "2999-01-01T00:00:00Z"}, 422, "only a dry run may look ahead"),
        # Checking names needs the database: the request's own unit of work (read-only) must
        # not hold SQLite's write lock meanwhile.
        ("expiry-sweep", {"purposes": ["no-such-purpose"]}, 404, "no-such-purpose"),
    ],
)
def test_bad_runs_are_refused_and_start_nothing(  # type: ignore[no-untyped-def]
    engine, tokens, flow, body, status, names
) -> None:
    before = row_counts(engine)
    answer = client().post(f"/api/v1/runs/{flow}", json=body, headers=bearer(tokens.compliance))
    assert answer.status_code == status, answer.text
    assert names in answer.json()["detail"]
    assert not [t for t in threading.enumerate() if t.name.startswith("run-")]
    assert row_counts(engine) == before


def test_compliance_starts_a_dry_run_sweep(prefect_harness, engine, tokens) -> None:  # type: ignore[no-untyped-def]
    as_of = (utcnow() + timedelta(days=365)).isoformat()
    answer = client().post(
        "/api/v1/runs/expiry-sweep",
        json={"dry_run": True, "as_of": as_of},
        headers=bearer(tokens.compliance),
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["parameters"]["dry_run"] is True
    assert answer.json()["requested_by"] == "api:carol"
    _join_runs()
    [entry] = audit_entries(engine, "flow.dry_run")
    assert entry.detail["flow"] == "expiry-sweep"
    assert entry.detail["outcome"] == "completed"
    assert entry.detail["parameters"]["dry_run"] is True
    assert entry.detail["requested_by"] == "api:carol"  # who asked, in the run's audit entry
    assert entry.run_id


def test_who_asked_is_recorded_only_for_the_run_it_asked_for(prefect_harness, engine, tokens):  # type: ignore[no-untyped-def]
    """The requester is set for the API's run only: a run started afterwards in the same
    process (a schedule, the CLI) records none."""
    from consentflow import runs

    answer = client().post(
        "/api/v1/runs/reconsent", json={"dry_run": True}, headers=bearer(tokens.admin)
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["requested_by"] == "api:root"
    _join_runs()
    flow_fn, params = runs.prepare_flow("reconsent", {"dry_run": True})
    assert flow_fn(params).requested_by is None
    assert [e.detail["requested_by"] for e in audit_entries(engine, "flow.dry_run")] == [
        "api:root",
        None,
    ]

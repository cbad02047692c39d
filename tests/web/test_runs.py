"""Ad-hoc flow runs through the API: compliance asks for a sweep from a script, and it is
created as a deployment run on the Prefect server (the test server, with a process pool and no
worker: creation is what the API does; the worker's part is tested end to end elsewhere)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from consentflow.models import utcnow
from tests.support import deployments
from tests.support.seeding import audit_entries, row_counts
from tests.support.web import bearer, client, seed


@pytest.fixture
def tokens(engine):  # type: ignore[no-untyped-def]
    return seed(engine)


@pytest.fixture(scope="module")
def deployed(prefect_harness) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return deployments.deploy()


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
        # A misspelt field is refused, never ignored (it once ran a real sweep).
        ("expiry-sweep", {"dryrun": True}, 422, "dryrun: this flow takes no such parameter"),
        ("expiry-sweep", {"batch_size": 0}, 422, "batch_size"),
        ("expiry-sweep", {"batch_size": 10**9}, 422, "batch_size"),
        ("expiry-sweep", {"limit": -1}, 422, "limit"),
        ("expiry-sweep", {"as_of": "not a time"}, 422, "as_of"),
        ("reconsent", {"as_of": "2999-01-01T00:00:00Z"}, 422, "only a dry run may look ahead"),
        ("reconsent", {"deadline_days": 0}, 422, "deadline_days"),
        ("renewal-reminders", {"stages": [0]}, 422, "stages: bad reminder stages"),
        ("collection-followups", {"after_days": "soon"}, 422, "after_days"),
        # Checking names needs the database: the request's own unit of work (read-only) must
        # not hold SQLite's write lock meanwhile.
        ("expiry-sweep", {"purposes": ["no-such-purpose"]}, 422, "purposes: unknown purpose"),
        ("expiry-sweep", {"purposes": "news"}, 422, "purposes"),
    ],
)
def test_bad_runs_are_refused_and_start_nothing(  # type: ignore[no-untyped-def]
    engine, tokens, deployed, flow, body, status, names
) -> None:
    before, runs_before = row_counts(engine), deployments.flow_run_count()
    answer = client().post(f"/api/v1/runs/{flow}", json=body, headers=bearer(tokens.compliance))
    assert answer.status_code == status, answer.text
    assert names in answer.json()["detail"]
    assert row_counts(engine) == before
    assert deployments.flow_run_count() == runs_before


def test_compliance_starts_a_run_on_a_worker(engine, tokens, deployed) -> None:  # type: ignore[no-untyped-def]
    as_of = (utcnow() + timedelta(days=365)).isoformat()
    answer = client().post(
        "/api/v1/runs/expiry-sweep",
        json={"dry_run": True, "as_of": as_of, "purposes": ["news"]},
        headers=bearer(tokens.compliance),
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    run_id = body["run_id"]
    assert body["deployment"] == "expiry-sweep/adhoc" and body["requested_by"] == "api:carol"
    assert body["state"] == "Scheduled" and body["status"] == "accepted"
    assert body["ui_url"].endswith(f"/runs/flow-run/{run_id}")
    # Only what was given is sent: the deployment's own defaults apply to the rest.
    given = {"dry_run": True, "as_of": body["parameters"]["as_of"], "purposes": ["news"]}
    assert body["parameters"] == given

    created = deployments.flow_run(run_id)
    assert created.deployment_id == deployed["expiry-sweep/adhoc"]
    assert created.parameters == given
    assert "requested-by:api:carol" in created.tags
    assert created.state.is_scheduled()  # no worker here: created, not run

    # Who asked is on record when the run is created, not when it ends.
    [entry] = audit_entries(engine, "flow.requested")
    assert entry.run_id == run_id and entry.actor == "api:carol" and entry.channel == "api"
    assert entry.detail["parameters"] == given
    assert entry.detail["deployment"] == "expiry-sweep/adhoc"
    assert entry.detail["ui_url"] == body["ui_url"]
    assert audit_entries(engine, "flow.dry_run") == []  # nothing ran in the web process


def test_several_deployments_need_a_name(engine, tokens, deployed) -> None:  # type: ignore[no-untyped-def]
    app, auth = client(), bearer(tokens.admin)
    refused = app.post("/api/v1/runs/reconsent", json={}, headers=auth)
    assert refused.status_code == 422
    assert "several deployments (first, second): name one" in refused.json()["detail"]
    chosen = app.post("/api/v1/runs/reconsent?deployment=second", json={}, headers=auth)
    assert chosen.status_code == 202, chosen.text
    assert chosen.json()["requested_by"] == "api:root"
    created = deployments.flow_run(chosen.json()["run_id"])
    assert created.deployment_id == deployed["reconsent/second"]
    unknown = app.post("/api/v1/runs/reconsent?deployment=third", json={}, headers=auth)
    assert unknown.status_code == 409
    assert "no deployment reconsent/third" in unknown.json()["detail"]
    assert [e.run_id for e in audit_entries(engine, "flow.requested")] == [chosen.json()["run_id"]]


def test_no_deployment_or_no_server_is_a_conflict(engine, tokens, deployed) -> None:  # type: ignore[no-untyped-def]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    app, auth = client(), bearer(tokens.compliance)
    before = row_counts(engine)
    answer = app.post("/api/v1/runs/collection-followups", json={}, headers=auth)
    assert answer.status_code == 409
    assert "no deployment of collection-followups" in answer.json()["detail"]
    assert "consentflow deploy" in answer.json()["detail"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        answer = app.post("/api/v1/runs/expiry-sweep", json={}, headers=auth)
        assert answer.status_code == 409
        assert "no Prefect server is configured" in answer.json()["detail"]
        # Parameters are still checked first: a bad one is a 422 even then.
        bad = app.post("/api/v1/runs/expiry-sweep", json={"dryrun": 1}, headers=auth)
        assert bad.status_code == 422
    assert row_counts(engine) == before

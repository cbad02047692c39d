"""`consentflow run FLOW` with a Prefect server configured: a run of the flow's deployment on a
worker (the test server, a process pool without a worker: creation is what the command does),
or with --local in this process; who asked is recorded either way. Runs in process without a
server are tested with the flows (tests/flows/test_lifecycle_flows.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consentflow import db, purposes
from consentflow.cli.run import requester
from tests.support import deployments
from tests.support.seeding import audit_entries, row_counts

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def deployed(prefect_harness) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return deployments.deploy()


@pytest.fixture
def on_server(engine, deployed, monkeypatch):  # type: ignore[no-untyped-def]
    """PREFECT_API_URL names the test server; one purpose, news."""
    monkeypatch.setenv("PREFECT_API_URL", deployments.api_url())
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    return engine


def test_a_run_goes_to_a_worker_when_a_server_is_configured(on_server, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--dry-run", "--purposes", "news", "--json")
    assert r.code == 0, r.err
    started = json.loads(r.out)
    who = requester()
    assert who.startswith("cli:") and started["requested_by"] == who
    assert started["deployment"] == "expiry-sweep/adhoc" and started["state"] == "Scheduled"
    created = deployments.flow_run(started["run_id"])
    assert created.parameters == {"dry_run": True, "purposes": ["news"]}
    assert f"requested-by:{who}" in created.tags
    [entry] = audit_entries(on_server, "flow.requested")
    assert entry.run_id == started["run_id"] and entry.actor == who
    assert entry.channel == "support" and entry.detail["parameters"] == created.parameters

    text = cli("run", "expiry-sweep", "--batch-size", "10")
    assert text.code == 0, text.err
    first, link = text.out.strip().splitlines()
    assert first.startswith("expiry-sweep: run ") and "created on expiry-sweep/adhoc" in first
    assert first.endswith(f"(Scheduled), requested by {who}")
    assert link.strip().endswith(f"/runs/flow-run/{first.split()[2]}")
    # Nothing ran in this process: no end entry, only what was asked.
    assert audit_entries(on_server, "flow.run") == audit_entries(on_server, "flow.dry_run") == []
    assert len(audit_entries(on_server, "flow.requested")) == 2


def test_local_runs_here_and_records_who_asked(on_server, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--local", "--dry-run", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["outcome"] == "completed" and report["deployment"] is None
    assert report["requested_by"] == requester()
    [entry] = audit_entries(on_server, "flow.dry_run")
    assert entry.detail == report
    assert audit_entries(on_server, "flow.requested") == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["collection-followups"], 1, "no deployment of collection-followups on the Prefect"),
        (["reconsent"], 2, "reconsent has several deployments (first, second): name one"),
        (["reconsent", "--deployment", "third"], 1, "no deployment reconsent/third"),
        (["expiry-sweep", "--local", "--watch"], 2, "--watch are for a run on a worker"),
        (["expiry-sweep", "--local", "--deployment", "adhoc"], 2, "not --local"),
        (["expiry-sweep", "--param", "dryrun=true"], 2, "bad --param 'dryrun=true'"),
        (["expiry-sweep", "--purposes", "nope"], 2, "purposes: unknown purpose 'nope'"),
        (["expiry-sweep", "--as-of", "2999-01-01"], 2, "only a dry run may look ahead"),
    ],
)
def test_refusals_are_one_line_and_create_nothing(on_server, cli, args, code, message) -> None:  # type: ignore[no-untyped-def]
    before, runs_before = row_counts(on_server), deployments.flow_run_count()
    r = cli("run", *args)
    assert r.code == code, r.err
    [line] = r.err.strip().splitlines()
    assert message in line and "Traceback" not in r.err
    assert row_counts(on_server) == before
    assert deployments.flow_run_count() == runs_before


def test_several_deployments_one_named(on_server, cli, deployed) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "reconsent", "--deployment", "first", "--dry-run", "--json")
    assert r.code == 0, r.err
    created = deployments.flow_run(json.loads(r.out)["run_id"])
    assert created.deployment_id == deployed["reconsent/first"]


def test_watch_needs_a_server(engine, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--watch")
    assert r.code == 2 and "--watch needs a Prefect server" in r.err

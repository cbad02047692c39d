"""``consentflow deploy`` against a real ``prefect server start`` (``support/prefect_server.py``).

Deploys the repository's own ``prefect.yaml``, then checks on the server what an operator relies
on: the process work pool; every deployment with its parameters, schedules, concurrency and
trigger automations; the zombie-detection automation; that deploying again changes nothing
(idempotent); and that the triggers act on real events with the parameters templated from
them (a failing endpoint and a Failed run alert; a Crashed propagate run, and a loop that
ended, start the next propagate run).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parents[2]
ZOMBIE = "consentflow: mark runs without heartbeat Crashed"
EXPECTED = {
    "expiry-sweep/hourly",
    "renewal-reminders/daily",
    "collection-followups/daily",
    "reconsent/daily",
    "retention-sweep/daily",
    "propagate/continuous",
    "operator-alerts/on-event",
    "audit-anchor/hourly",
    "compliance-digest/daily",
    "compliance-digest/alerts",
}


def consentflow(
    *args: str, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consentflow.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repository's prefect.yaml deployed once for the module; the command's stdout. Its
    environment keeps Prefect's default heartbeat (180 s), which it warns about."""
    env = prefect_server.client_env()
    env["CONSENTFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('db')}/cf.db"
    done = consentflow("deploy", "--project-dir", str(ROOT), env=env)
    assert done.returncode == 0, done.stderr + prefect_server.log_tail()
    assert done.stderr.splitlines() == [
        "consentflow: warning: PREFECT_FLOWS_HEARTBEAT_FREQUENCY is 180 s here: set it to 30 on "
        "every worker, or their runs are marked Crashed after 90 s"
    ]
    return done.stdout


def _sync(server: PrefectServer, call: Callable[[Any], Any]) -> Any:
    from prefect.client.orchestration import get_client

    with server.settings(), get_client(sync_client=True) as client:
        return call(client)


def _deployments(server: PrefectServer) -> dict[str, Any]:
    def read(client: Any) -> dict[str, Any]:
        flows = {f.id: f.name for f in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}": d for d in client.read_deployments()}

    return dict(_sync(server, read))


def _automations(server: PrefectServer, deployment_id: Any = None) -> list[Any]:
    if deployment_id is None:
        return list(_sync(server, lambda c: c.read_automations()))
    owner = f"prefect.deployment.{deployment_id}"
    return list(_sync(server, lambda c: c.read_resource_related_automations(owner)))


def test_deploy_refuses_without_a_server_or_a_prefect_yaml(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    env = prefect_server.client_env()
    env.pop("PREFECT_API_URL")
    done = consentflow("deploy", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "consentflow: PREFECT_API_URL is not set: point it at the Prefect server's API"
    ]
    done = consentflow("deploy", "--project-dir", str(tmp_path), env=prefect_server.client_env())
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert f"no prefect.yaml in {tmp_path}" in done.stderr
    assert _sync(prefect_server, lambda c: c.read_work_pools()) == []  # nothing touched


def test_deploy_creates_the_pool_the_deployments_and_the_automations(
    prefect_server: PrefectServer, deployed: str
) -> None:
    assert "work pool consentflow-pool: created" in deployed
    assert f"automation {ZOMBIE!r}: created" in deployed
    pool = _sync(prefect_server, lambda c: c.read_work_pool("consentflow-pool"))
    assert pool.type == "process"

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    found = _deployments(prefect_server)
    assert set(found) == EXPECTED
    for name in EXPECTED:
        assert f"deployment {name}: deployed" in deployed
    by_entrypoint = {(d["entrypoint"], d["name"]): d for d in spec["deployments"]}
    for dep in found.values():
        assert dep.parameters == by_entrypoint[dep.entrypoint, dep.name].get("parameters", {})
        assert dep.work_pool_name == "consentflow-pool"

    hourly = found["expiry-sweep/hourly"]
    assert [s.schedule.cron for s in hourly.schedules] == ["5 * * * *"]
    assert hourly.global_concurrency_limit.limit == 1
    assert hourly.concurrency_options.collision_strategy == "ENQUEUE"
    loop = found["propagate/continuous"]
    assert [s.schedule.interval for s in loop.schedules] == [timedelta(minutes=5)]
    assert loop.global_concurrency_limit is None  # slots, not a limit that cancels runs
    assert loop.parameters == {"run_seconds": 300, "loops": 1}
    assert found["operator-alerts/on-event"].schedules == []

    restart = _automations(prefect_server, loop.id)
    assert sorted(a.trigger.expect.pop() for a in restart) == [
        "consentflow.propagate.loop-ended",
        "prefect.flow-run.Crashed",
    ]
    alerts = _automations(prefect_server, found["operator-alerts/on-event"].id)
    assert sorted(sorted(a.trigger.expect) for a in alerts) == [
        ["consentflow.delivery.dead_lettered", "consentflow.endpoint.failing"],
        ["prefect.flow-run.Crashed", "prefect.flow-run.Failed", "prefect.flow-run.TimedOut"],
    ]

    (zombie,) = [a for a in _automations(prefect_server) if a.name == ZOMBIE]
    assert zombie.trigger.posture == "Proactive"
    assert zombie.trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.heartbeat" in zombie.trigger.expect
    assert zombie.trigger.for_each == {"prefect.resource.id"}
    assert zombie.trigger.within == timedelta(seconds=90)
    (action,) = zombie.actions
    assert action.type == "change-flow-run-state" and action.state == "CRASHED"


def test_deploying_again_changes_nothing_but_the_zombie_window(
    prefect_server: PrefectServer, deployed: str
) -> None:
    before = _deployments(prefect_server)
    count = len(_automations(prefect_server))
    env = {**prefect_server.client_env(), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    done = consentflow("deploy", "--project-dir", str(ROOT), "--zombie-after", "120", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # a 30 s heartbeat suits a 120 s window
    assert "work pool consentflow-pool: exists" in done.stdout
    assert f"automation {ZOMBIE!r}: updated" in done.stdout
    after = _deployments(prefect_server)
    assert {n: d.id for n, d in after.items()} == {n: d.id for n, d in before.items()}
    assert len(_automations(prefect_server)) == count
    (zombie,) = [a for a in _automations(prefect_server) if a.name == ZOMBIE]
    assert zombie.trigger.within == timedelta(seconds=120)


# ----------------------------------------------------------------- triggers on real events


def _post_event(
    server: PrefectServer, event: str, resource: dict[str, str], related: list[dict[str, str]]
) -> None:
    body = [
        {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": event,
            "resource": resource,
            "related": related,
            "payload": {},
        }
    ]
    assert httpx.post(f"{server.api_url}/events", json=body, timeout=10).status_code == 204


def _runs_of(server: PrefectServer, deployment_id: Any, want: Callable[[Any], bool]) -> Any:
    """The first flow run of the deployment ``want`` accepts (polling the server, 60 s at most:
    automations act asynchronously, and there is nothing to wait on but the API)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for run in _sync(server, lambda c: c.read_flow_runs(deployment_filter=flt)):
            if want(run):
                return run
        time.sleep(0.5)
    raise AssertionError(f"no matching run of deployment {deployment_id}:\n{server.log_tail()}")


def _ended_run(server: PrefectServer, flow: str, state: str, message: str) -> str:
    """A run of ``flow`` (not of a deployment) set to ``state`` on the server; its id."""
    from prefect import flow as as_flow
    from prefect.states import Crashed, Failed

    stand_in = as_flow(name=flow)(lambda: None)

    def make(client: Any) -> str:
        run = client.create_flow_run(stand_in)
        final = Failed(message=message) if state == "Failed" else Crashed(message=message)
        client.set_flow_run_state(run.id, final, force=True)
        return str(run.id)

    return str(_sync(server, make))


def test_the_triggers_act_on_real_events(prefect_server: PrefectServer, deployed: str) -> None:
    found = _deployments(prefect_server)
    alerts, loop = found["operator-alerts/on-event"].id, found["propagate/continuous"].id
    run = str(uuid.uuid4())

    # a failing endpoint, emitted from inside a propagate run (Prefect adds the run and flow)
    _post_event(
        prefect_server,
        "consentflow.endpoint.failing",
        {"prefect.resource.id": "consentflow.endpoint.crm", "prefect.resource.name": "crm"},
        [
            {"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.role": "flow-run"},
            {
                "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": "propagate",
            },
        ],
    )
    alert = _runs_of(
        prefect_server, alerts, lambda r: r.parameters.get("resource") == "consentflow.endpoint.crm"
    )
    assert alert.parameters == {
        "event": "consentflow.endpoint.failing",
        "resource": "consentflow.endpoint.crm",
        "run_id": f"prefect.flow-run.{run}",
        "flow": "propagate",
    }

    # a Failed expiry sweep: the alert names the run, the flow, the state and its message
    failed = _ended_run(prefect_server, "expiry-sweep", "Failed", "cannot connect to the database")
    alert = _runs_of(
        prefect_server,
        alerts,
        lambda r: r.parameters.get("resource") == f"prefect.flow-run.{failed}",
    )
    assert alert.parameters == {
        "event": "prefect.flow-run.Failed",
        "resource": f"prefect.flow-run.{failed}",
        "run_id": f"prefect.flow-run.{failed}",
        "flow": "expiry-sweep",
        "state": "Failed",
        "message": "cannot connect to the database",
    }

    # a Crashed propagate run: replaced at once, and alerted
    crashed = _ended_run(prefect_server, "propagate", "Crashed", "no heartbeat")
    _runs_of(
        prefect_server,
        alerts,
        lambda r: r.parameters.get("run_id") == f"prefect.flow-run.{crashed}",
    )
    first = _runs_of(prefect_server, loop, lambda r: r.auto_scheduled is False)

    # a loop that ended: the next one starts
    _post_event(
        prefect_server,
        "consentflow.propagate.loop-ended",
        {
            "prefect.resource.id": "consentflow.propagate.loop",
            "prefect.resource.name": "propagate loop",
        },
        [],
    )
    _runs_of(prefect_server, loop, lambda r: r.auto_scheduled is False and r.id != first.id)

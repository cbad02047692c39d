"""``consentflow deploy``: put consentflow's deployments and automations on a Prefect server.

Three steps, each idempotent, so the command is safe to run after every upgrade:

1. the work pools ``prefect.yaml`` names (``consentflow-pool``) are created as ``process`` pools
   if missing (an existing pool is left exactly as the operator configured it);
2. ``prefect --no-prompt deploy --all`` runs in the directory holding ``prefect.yaml`` (Prefect
   records that directory as the flows' working directory, so deploy from the checkout the worker
   runs from); it replaces each deployment's schedules and trigger automations;
3. the zombie-detection automation (``ZOMBIE_AUTOMATION``) is created, or updated in place if
   one by that name exists (duplicates are removed): a Proactive trigger on each consentflow flow
   run's ``prefect.flow-run.heartbeat``; when no heartbeat nor final state follows within
   ``--zombie-after`` seconds, the run is set Crashed, which releases what it held and fires the
   ``propagate`` restart and the operator alert. Workers must heartbeat more often than that
   (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30``).

Failure modes: no ``prefect.yaml`` in the project directory, or ``PREFECT_API_URL`` unset, is one
line and exit 2 before anything is touched; an unreachable server, or ``prefect deploy``
failing, is one line (with the last lines of Prefect's output) and exit 1; steps already done
stay done, and running the command again finishes the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from consentflow.cli._common import app, fail
from consentflow.runs import flow_names

if TYPE_CHECKING:
    from prefect.automations import Automation
    from prefect.client.orchestration import SyncPrefectClient

#: The name of the zombie-detection automation (how ``deploy`` finds it again).
ZOMBIE_AUTOMATION = "consentflow: mark runs without heartbeat Crashed"

#: The events that show a flow run is alive or finished (what the zombie trigger expects).
ALIVE_OR_DONE = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.TimedOut",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)

#: Seconds to wait for ``prefect deploy``.
DEPLOY_TIMEOUT = 600


@app.command("deploy")
def deploy(
    project_dir: Annotated[
        Path,
        typer.Option(
            "--project-dir",
            help="The directory holding prefect.yaml: the checkout the worker runs from.",
        ),
    ] = Path("."),
    zombie_after: Annotated[
        int,
        typer.Option(
            "--zombie-after",
            min=60,
            max=3600,
            help="Mark a run Crashed when no heartbeat came for this many seconds (workers "
            "heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds: keep this at three "
            "times that or more).",
        ),
    ] = 90,
) -> None:
    """Create the work pool if missing, deploy every flow in prefect.yaml, and create or update
    the automation that marks runs whose heartbeat stopped Crashed."""
    project = project_dir.resolve()
    spec = project / "prefect.yaml"
    if not spec.is_file():
        fail(f"no prefect.yaml in {project}: give --project-dir (the checkout's root)", 2)
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: point it at the Prefect server's API", 2)
    pools = work_pools(spec)

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            client.hello()
        except Exception as exc:
            fail(f"cannot reach the Prefect server at {os.environ['PREFECT_API_URL']}: {exc}", 1)
        for pool in pools:
            created = ensure_pool(client, pool)
            typer.echo(f"work pool {pool}: {'created' if created else 'exists'}")
    run_prefect_deploy(project)
    with get_client(sync_client=True) as client:
        for name in deployed(client, spec):
            typer.echo(f"deployment {name}: deployed")
        action = upsert_automation(client, zombie_automation(zombie_after))
    typer.echo(f"automation {ZOMBIE_AUTOMATION!r}: {action}")
    heartbeat_warning(zombie_after)


def heartbeat_warning(zombie_after: int) -> None:
    """Warn (one line) when this environment's heartbeat is too slow for ``zombie_after``: a
    worker with the same environment would have its healthy runs marked Crashed."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    beat = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    if beat is None or beat * 3 > zombie_after:
        shown = "off" if beat is None else f"{beat} s"
        typer.echo(
            f"consentflow: warning: PREFECT_FLOWS_HEARTBEAT_FREQUENCY is {shown} here: set it to "
            f"30 on every worker, or their runs are marked Crashed after {zombie_after} s",
            err=True,
        )


def work_pools(spec: Path) -> list[str]:
    """The work pools the deployments in ``spec`` use, in order, each once."""
    try:
        data = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        fail(f"{spec} is not valid YAML: {str(exc).splitlines()[0]}", 2)
    pools: list[str] = []
    for item in data.get("deployments") or []:
        name = ((item or {}).get("work_pool") or {}).get("name")
        if name and name not in pools:
            pools.append(str(name))
    if not pools:
        fail(f"{spec} names no work pool: give each deployment work_pool.name", 2)
    return pools


def ensure_pool(client: SyncPrefectClient, name: str) -> bool:
    """Create the ``process`` work pool ``name`` unless it exists; whether it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    template = ProcessWorker.get_default_base_job_template()
    client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
    return True


def run_prefect_deploy(project: Path) -> None:
    """``prefect --no-prompt deploy --all`` in ``project``; exit 1 with its last lines if it
    fails."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    env = {**os.environ, "PREFECT_CLI_COLORS": "false", "PREFECT_CLI_WRAP_LINES": "false"}
    try:
        done = subprocess.run(
            command,
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"prefect deploy did not finish within {DEPLOY_TIMEOUT} s", 1)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        tail = " | ".join(lines[-3:]) or f"exit status {done.returncode}"
        fail(f"prefect deploy failed: {tail}", 1)


def deployed(client: SyncPrefectClient, spec: Path) -> list[str]:
    """The server's deployments on the pools of ``spec``, as ``flow/deployment``."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    names = {pool for pool in work_pools(spec)}
    found = client.read_deployments(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=sorted(names)))
    )
    flows = {f.id: f.name for f in client.read_flows()}
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in found)


def zombie_automation(after_seconds: int) -> Automation:
    """The automation that marks a consentflow flow run Crashed when its heartbeats stop."""
    from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    trigger: Any = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_names()},
        after={"prefect.flow-run.heartbeat"},
        expect=set(ALIVE_OR_DONE),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=after_seconds),
    )
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"A consentflow flow run that sent a heartbeat and then nothing for {after_seconds} s "
            "(no heartbeat, no final state) is marked Crashed: its worker died. Managed by "
            "`consentflow deploy`."
        ),
        enabled=True,
        trigger=trigger,
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {after_seconds} s: the worker running it is gone "
                "(marked by the consentflow zombie automation).",
            )
        ],
    )


def upsert_automation(client: SyncPrefectClient, automation: Automation) -> str:
    """Create ``automation``, or update the one of that name in place; ``created`` or
    ``updated``. Other automations of the same name (made by hand) are deleted."""
    from prefect.events.schemas.automations import AutomationCore

    core = AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        client.create_automation(core)
        return "created"
    first, *extra = existing
    client.update_automation(first.id, core)
    for other in extra:
        client.delete_automation(other.id)
    return "updated"

"""Real Prefect workers for the operations tests, a hard kill of one, and polling with a deadline.

``Worker`` runs ``prefect worker start --pool POOL`` as a subprocess in a session of its own,
logging to a file. ``kill`` is what a dead machine does to it: the process tree (the worker, the
flow-run supervisors it started in sessions of their own, the engines under them) is read from
``/proc`` *first* (a killed parent's children are re-parented and lost from the tree), then every
process group in it and every process gets SIGKILL. Nothing is asked to stop: no hook, no
``finally`` and no Prefect state change runs in the killed processes. ``stop`` (teardown) is the
same kill, since a worker does not stop promptly on SIGTERM (``/work/shared/reference/prefect.md``).

``SchedulerlessServer`` is ``tests.support.prefect_server.PrefectServer`` with the scheduler
service off: every flow run on it is one a test asked for or one a trigger or automation made,
so a deployment's schedule (the hourly sweep, the 5-minute propagate safety net) never puts a run
of its own on the tests' worker. Everything event-driven (triggers, the zombie automation, the
concurrency-slot bookkeeping) runs as in production.

``eventually`` polls a condition until it holds or a deadline passes; the pause between polls is
polling, not synchronisation (nothing here waits a fixed time for something to have happened).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from tests.support.prefect_server import PrefectServer

T = TypeVar("T")

#: How often ``eventually`` looks again.
POLL_SECONDS = 0.2


class SchedulerlessServer(PrefectServer):
    """A ``prefect server start`` whose scheduler service is off (see the module docstring)."""

    def base_env(self, home: Path) -> dict[str, str]:
        env = super().base_env(home)
        env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
        return env


def eventually(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """The first truthy value of ``condition()`` within ``timeout`` seconds; else an assertion
    error naming ``what`` (and what ``diagnose`` says about the situation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"not within {timeout:.0f} s: {what}{detail}")
        time.sleep(POLL_SECONDS)


def _parents() -> dict[int, int]:
    """Every process's parent, from ``/proc/PID/stat``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, parents first."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def kill_tree(root: int) -> list[int]:
    """SIGKILL ``root``'s whole tree: each process group in it, then each process. The pids."""
    tree = process_tree(root)
    groups = set()
    for pid in tree:
        with suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgid(0))  # never our own group (a child that stayed in it)
    for group in groups:
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for pid in tree:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return tree


class Worker:
    """One ``prefect worker start`` subprocess with the environment ``env`` (and ``options``
    such as ``--name NAME --limit 1``)."""

    def __init__(
        self, env: dict[str, str], log_path: Path, pool: str, options: Sequence[str] = ()
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.pool = pool
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool]
        command += ["--type", "process", *self.options]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "the worker was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def flow_run_processes(self) -> list[int]:
        """The processes the worker started (flow-run supervisors and engines)."""
        return process_tree(self.pid)[1:] if self.alive() else []

    def kill(self) -> list[int]:
        """SIGKILL the worker and every process under it (see the module docstring)."""
        assert self.process is not None, "the worker was not started"
        killed = kill_tree(self.pid)
        self.process.wait(timeout=30)
        return killed

    def stop(self) -> None:
        if self.alive():
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no worker log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def read_flow_run(server: PrefectServer, run_id: str) -> Any:
    """The flow run as the server has it."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with server.settings(), get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def flow_runs_of(server: PrefectServer, flow: str) -> list[Any]:
    """Every run of the flow named ``flow`` on the server, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with server.settings(), get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
        )


def state_of(server: PrefectServer, run_id: str) -> str:
    """The run's state type (``RUNNING``, ``COMPLETED``, ``CRASHED``, ...) or ``-``."""
    state = read_flow_run(server, run_id).state
    return state.type.value if state is not None else "-"

"""Benchmark: how long ``consentflow run expiry-sweep`` takes to start its first batch.

Not a test. Each run is a real ``consentflow run expiry-sweep`` process, started as a user
starts it (the installed ``consentflow`` script, a fresh environment with no ``PREFECT_*``
variables, its own working directory), on a SQLite database that has a few consents due before
each run. The figure is the time from just before the process is started to the start of its
first batch: the ``recorded_at`` of the first audit entry the batch writes (the sweep takes
"now" once, when the batch begins: ``lifecycle.expire_due``); the process's total time is
printed too. Runs are numbered: run 1 is the first on a new data directory, the later ones
reuse whatever the earlier ones prepared.

Modes (``--modes``, default both), each in rounds: every round runs ``python -c "import
prefect"`` and then each series once, so all series see the same load on a shared machine; each
figure is also printed in units of its round's ``import prefect`` time.

* ``local``, no Prefect server configured (issue 11's target 3: first batch under 5 s, every
  run): ``consentflow run expiry-sweep`` as it is now; **before**: the same command the way it
  started Prefect before (Prefect's own temporary server in a new ``PREFECT_HOME`` each run,
  migrations included: an explicit ``PREFECT_HOME`` makes the CLI leave Prefect to itself, which
  is exactly that); the **baseline** bare Prefect flow with one task (``@flow`` calling one
  ``@task``; the figure is when the task's body starts) in a reused ``PREFECT_HOME``, Prefect's
  own best case (run 1 migrates, later runs reuse). Then two ``consentflow run`` at once (both
  must complete).
* ``server``: a local ``prefect server start`` (its own home, started and made ready before
  timing; not part of the figures), ``PREFECT_API_URL`` set (target under 2 s):
  ``consentflow run expiry-sweep --local`` (the flow runs in the command's process against the
  server); ``consentflow run expiry-sweep`` as a user runs it there, which only creates a
  deployment run for a worker (timed to its ``flow.requested`` entry, and to the command's
  exit; no worker runs it); the bare flow against the server.

CPU seconds of each command (with the embedded server it waited for) are printed too: less
sensitive than wall time to other jobs on a shared machine.

    python bench/startup.py                        # both modes, 4 rounds each
    python bench/startup.py --runs 2 --modes local
    python bench/startup.py --importtime           # also: where the CLI's imports spend time
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import col, select

from consentflow import db, lifecycle, purposes, subjects
from consentflow.lifecycle import Actor, ImportRow
from consentflow.models import ActorType, AuditEntry, Channel, State, utcnow

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
END_ACTIONS = ("flow.run", "flow.dry_run", "flow.requested")

BARE_FLOW = """
import sys, time
from prefect import flow, task

@task
def one():
    print("FIRST", time.time(), flush=True)

@flow
def bare():
    one()

bare()
"""

DEPLOY = """
from consentflow import runs
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
with get_client(sync_client=True) as client:
    client.create_work_pool(WorkPoolCreate(name="bench", type="process"))
flow_fn, _ = runs.load_flow("expiry-sweep")
flow_fn.to_deployment(name="adhoc", work_pool_name="bench").apply()
"""


# --------------------------------------------------------------------------------------------
# The database and the marker
# --------------------------------------------------------------------------------------------


class Ledger:
    """The run's SQLite database: a purpose, a few consents due before each run."""

    def __init__(self, root: Path, due: int) -> None:
        self.url = f"sqlite:///{root / 'consentflow.db'}"
        self.engine = db.make_engine(self.url)
        db.upgrade(self.engine)
        with db.session_scope(self.engine) as s:
            purposes.add(s, "news", title="News", validity_days=365)
        self.due = due
        self.batches = 0

    def seed(self) -> int:
        """``due`` new consents that ended yesterday; the audit's last seq before the run."""
        self.batches += 1
        end = utcnow() - timedelta(days=1)
        actor = Actor(ActorType.IMPORT, Channel.IMPORT, name="bench")
        with db.session_scope(self.engine) as s:
            ids = [subjects.add(s, f"b{self.batches}-{i}", email=None).id for i in range(self.due)]
            rows = [ImportRow(i, "news", State.GIVEN, end - timedelta(days=300), end) for i in ids]
            lifecycle.import_consents(s, rows, actor)
        return self.last_seq()

    def last_seq(self) -> int:
        with db.session_scope(self.engine, readonly=True) as s:
            return int(s.exec(select(func.coalesce(func.max(AuditEntry.seq), 0))).one())

    def first_entry(self, after: int, actions: tuple[str, ...] | None = None) -> float | None:
        """When the first entry after ``after`` was recorded (epoch seconds): of ``actions``, or
        the first that is not a run's own entry."""
        where = [col(AuditEntry.seq) > after]
        if actions:
            where.append(col(AuditEntry.action).in_(actions))
        else:
            where.append(col(AuditEntry.action).not_in(END_ACTIONS))
        with db.session_scope(self.engine, readonly=True) as s:
            found = s.exec(
                select(AuditEntry.recorded_at).where(*where).order_by(col(AuditEntry.seq))
            ).first()
        return found.timestamp() if found is not None else None


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def user_env(root: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no Prefect variables, a home and data directory of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CONSENTFLOW_"))}
    home = root / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), CONSENTFLOW_DATA_DIR=str(root / "data"), **extra)
    return env


#: CPU seconds (user + system) of the last ``timed`` command and the processes it waited for
#: (the embedded server): less sensitive than wall time to other jobs on a shared machine.
LAST_CPU = [0.0]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(start epoch, seconds to exit, stdout); fails loudly when the command fails."""
    cpu = _children_cpu()
    start = time.time()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    LAST_CPU[0] = _children_cpu() - cpu
    return start, time.time() - start, done.stdout


def cf_run(ledger: Ledger, env: dict[str, str], cwd: Path, *args: str) -> dict[str, float]:
    before = ledger.seed()
    start, total, _ = timed([str(BIN / "consentflow"), "run", "expiry-sweep", *args], env, cwd)
    first = ledger.first_entry(before)
    if first is None:
        raise SystemExit("the run wrote no audit entry: no first batch to time")
    return {"first": first - start, "total": total, "cpu": LAST_CPU[0]}


def bare_flow(env: dict[str, str], cwd: Path) -> dict[str, float]:
    start, total, out = timed([sys.executable, "-c", BARE_FLOW], env, cwd)
    marker = next(line for line in out.splitlines() if line.startswith("FIRST "))
    return {"first": float(marker.split()[1]) - start, "total": total, "cpu": LAST_CPU[0]}


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def prefect_server(root: Path) -> Any:
    """``prefect server start`` in its own home (as tests/support/prefect_server.py does)."""
    home = root / "server-home"
    home.mkdir()
    port = free_port()
    env = user_env(root, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false")
    command = [str(BIN / "prefect"), "server", "start", "--no-ui", "--host", "127.0.0.1"]
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"prefect server exited: see {root / 'server.log'}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


Rows = dict[str, list[dict[str, float]]]

QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # as consentflow run sets it
}

IMPORT_PREFECT = "baseline: python -c 'import prefect'"


def import_prefect() -> dict[str, float]:
    _, total, _ = timed([sys.executable, "-c", "import prefect"], dict(os.environ), ROOT)
    return {"first": total, "total": total, "cpu": LAST_CPU[0]}


def rounds(runs: int, series: dict[str, Any]) -> Rows:
    """``runs`` rounds, each running every series once in turn after ``import prefect``, so
    that every series sees the same load on a shared machine; each row also carries its
    round's ``import prefect`` time (``per_import``: the figure in units of it)."""
    results: Rows = {IMPORT_PREFECT: [], **{name: [] for name in series}}
    for _ in range(runs):
        base = import_prefect()
        results[IMPORT_PREFECT].append(base)
        for name, run in series.items():
            row = run()
            row["per_import"] = row["first"] / base["first"]
            results[name].append(row)
    return results


def mode_local(root: Path, runs: int, due: int) -> Rows:
    """No Prefect server: consentflow run now, as before, and a bare flow."""
    ledger = Ledger(root, due)
    env = user_env(root, CONSENTFLOW_DATABASE_URL=ledger.url)
    homes = iter(range(runs))

    def before() -> dict[str, float]:
        home = root / f"prefect-home-{next(homes)}"
        home.mkdir()
        old = user_env(root, CONSENTFLOW_DATABASE_URL=ledger.url, PREFECT_HOME=str(home))
        return cf_run(ledger, old, root)

    bare_home = root / "bare-home"
    bare_home.mkdir()
    bare_env = user_env(root, PREFECT_HOME=str(bare_home), **QUIET)
    results = rounds(
        runs,
        {
            "consentflow run (no server)": lambda: cf_run(ledger, env, root),
            "before: new PREFECT_HOME per run (as shipped before)": before,
            "baseline: bare flow, reused PREFECT_HOME": lambda: bare_flow(bare_env, root),
        },
    )
    results["consentflow run, 2 at once (after the above)"] = concurrent(ledger, env, root)
    return results


def concurrent(ledger: Ledger, env: dict[str, str], cwd: Path) -> list[dict[str, float]]:
    """Two runs at once: both complete; the first batch of either (they share the due
    consents: whichever batch comes first takes them)."""
    before = ledger.seed()
    command = [str(BIN / "consentflow"), "run", "expiry-sweep", "--json"]
    start = time.time()
    procs = [
        subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    total = time.time() - start
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a concurrent run failed:\n{err.decode()[-3000:]}")
    first = ledger.first_entry(before)
    return [{"first": (first or start) - start, "total": total}]


def mode_server(root: Path, runs: int, due: int) -> Rows:
    """A local Prefect server: --local, a deployment run created, and a bare flow."""
    ledger = Ledger(root, due)
    with prefect_server(root) as api:
        env = user_env(root, CONSENTFLOW_DATABASE_URL=ledger.url, PREFECT_API_URL=api, **QUIET)
        env["PREFECT_HOME"] = str(root / "client-home")
        timed([sys.executable, "-c", DEPLOY], env, root)

        def deployment_run() -> dict[str, float]:
            before = ledger.last_seq()
            command = [str(BIN / "consentflow"), "run", "expiry-sweep", "--dry-run"]
            start, total, _ = timed(command, env, root)
            created = ledger.first_entry(before, ("flow.requested",))
            return {"first": (created or start) - start, "total": total, "cpu": LAST_CPU[0]}

        return rounds(
            runs,
            {
                "consentflow run --local (server)": lambda: cf_run(ledger, env, root, "--local"),
                "consentflow run: deployment run created (to flow.requested)": deployment_run,
                "baseline: bare flow against the server": lambda: bare_flow(env, root),
            },
        )


def importtime() -> None:
    """The top cumulative imports of the CLI and the flow (``python -X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import consentflow.cli, flows.expiry_sweep"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((int(cumulative), depth, name.strip()))
    print("\nimport time (cumulative, top-level packages and their biggest children):")
    for cum, depth, name in sorted((r for r in rows if r[1] <= 2), reverse=True)[:15]:
        print(f"  {cum / 1e6:6.2f} s  {'  ' * depth}{name}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report(name: str, rows: list[dict[str, float]]) -> None:
    firsts = " ".join(f"{r['first']:5.2f}" for r in rows)
    totals = " ".join(f"{r['total']:5.2f}" for r in rows)
    later = [r["first"] for r in rows[1:]] or [rows[0]["first"]]
    print(f"{name}\n  first batch (s), run 1..{len(rows)}: {firsts}")
    print(f"  process total (s):              {totals}")
    if all("cpu" in r for r in rows):
        cpus = " ".join(f"{r['cpu']:5.2f}" for r in rows)
        print(f"  CPU s (process + its server):   {cpus}")
    if all("per_import" in r for r in rows):
        ratios = " ".join(f"{r['per_import']:5.2f}" for r in rows)
        print(f"  in units of that round's import:{ratios}")
    print(f"  run 1: {rows[0]['first']:.2f} s; later runs median {statistics.median(later):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per mode (default 4)")
    parser.add_argument("--due", type=int, default=20, help="consents due before each run")
    parser.add_argument("--modes", default="local,server", help="comma-separated")
    parser.add_argument("--importtime", action="store_true", help="print the import profile")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    modes = {"local": mode_local, "server": mode_server}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        for mode in args.modes.split(","):
            where = root / mode
            where.mkdir()
            print(f"\n== {mode}")
            for name, rows in modes[mode](where, args.runs, args.due).items():
                report(name, rows)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.importtime:
        importtime()
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

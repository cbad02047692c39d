"""Benchmark: the same bulk work through ONE Prefect worker, then TWO, on PostgreSQL (items/s).

Not a test. It starts a real ``prefect server start`` (scheduler off, in a throw-away home),
deploys the repository's ``prefect.yaml`` with ``consentflow deploy`` as an operator does, pauses
the automations (so no trigger starts runs of its own) and raises the ``expiry-sweep/hourly``
deployment's concurrency limit (shipped: one run at a time) to ``--runs``, so that several sweep
runs run at once. A receiver process on 127.0.0.1 answers every webhook 200 after ``--delay`` ms
(``bench/propagation.py``'s receiver). Then, for 1 worker and for 2 workers in turn (each phase
on a fresh PostgreSQL database of its own, dropped at the end):

1. the ledger: ``--consents`` given consents whose validity has ended (``bench/expiry_sweep.py``'s
   generator: N/4 subjects x 4 purposes), one system subscribed to every purpose, its webhook at
   the receiver: each expiry enqueues one delivery;
2. the workers: ``prefect worker start --pool consentflow-pool --limit L`` (``--limit``: the flow
   runs one worker takes at once), with the worker environment of ``prefect.yaml``; timed from
   when every one of them is online;
3. expiry: ``--runs`` runs of ``expiry-sweep/hourly`` (``batch_size`` ``--batch-size``) asked for
   at once; timed from the asking until no consent is due (the database says so): consents/s.
   They share the consents through ``SKIP LOCKED`` claims;
4. propagation: ``workers x L`` runs of ``propagate/continuous`` (each a delivery loop, a slot
   of its own: ``loops`` = 32, ``per_endpoint`` ``--per-endpoint``) asked for at once; timed from
   the asking until no delivery is pending: deliveries/s. They share the outbox through leased
   claims. The loops are then cancelled through the API (their end entries carry their counts).

Each phase is checked: every consent expired exactly once (one history row each), every delivery
delivered with exactly one attempt, the receiver saw each webhook id once. It prints both phases'
rates, each worker's share and the ratios (two workers / one worker).

What the ratio can show depends on the machine: workers on one machine share its cores, its
PostgreSQL and the Prefect server. On a two-core machine the second worker mostly adds runs
in flight (the limit per worker), not CPU; the sweep's batches also serialise on the audit
chain's head row (one audit chain per ledger), so its rate is bounded by the database, not by
the workers.

    python bench/workers.py                                     # defaults: a few minutes
    python bench/workers.py --consents 2000 --runs 2 --limit 1  # a quick run
    python bench/workers.py --url postgresql://postgres@127.0.0.1:5432/postgres --delay 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from propagation import Receivers  # noqa: E402  (sets the loopback allowance and a secret key)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from consentflow import db  # noqa: E402
from consentflow.models import utcnow  # noqa: E402

POOL = "consentflow-pool"
EXPIRY = "expiry-sweep/hourly"
PROPAGATE = "propagate/continuous"
DEADLINE = 1800.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is truthy (its value), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/workers.py: not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# The ledger of one phase
# --------------------------------------------------------------------------------------------


def new_database(server_url: str, tag: str) -> tuple[str, Callable[[], None]]:
    """A fresh, upgraded PostgreSQL database; its URL and a function that drops it."""
    parsed = make_url(db.normalise_url(server_url))
    name = f"consentflow_bench_workers_{tag}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        parsed.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = parsed.set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url, drop


def fill_ledger(engine: Engine, n: int, receiver_port: int) -> None:
    """``n`` consents due for expiry, one system subscribed to all, webhook at the receiver."""
    from expiry_sweep import fill

    fill(engine, n, n, utcnow())
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE system SET webhook_url = :url"),
            {"url": f"http://127.0.0.1:{receiver_port}/hook"},
        )


def scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def check(engine: Engine, n: int, received: dict[str, Any]) -> list[str]:
    """What is wrong with the phase's outcome (nothing: an empty list)."""
    problems = []
    counts = {
        "consents still given": scalar(engine, "SELECT count(*) FROM consent WHERE state='given'"),
        "consents expired twice": scalar(
            engine,
            "SELECT count(*) FROM (SELECT subject_id, purpose_id FROM consent_event"
            " WHERE action='expire' GROUP BY 1, 2 HAVING count(*) > 1) t",
        ),
        "deliveries not delivered": scalar(
            engine, "SELECT count(*) FROM delivery WHERE state <> 'delivered'"
        ),
        "deliveries with more than one attempt": scalar(
            engine,
            "SELECT count(*) FROM (SELECT delivery_id FROM delivery_attempt"
            " GROUP BY 1 HAVING count(*) > 1) t",
        ),
    }
    problems += [f"{what}: {k}" for what, k in counts.items() if k]
    expired = scalar(engine, "SELECT count(*) FROM consent_event WHERE action='expire'")
    if expired != n:
        problems.append(f"{expired} expiries recorded, not {n}")
    if received["requests"] != n or received["unique"] != n:
        problems.append(f"receiver: {received['requests']} requests, {received['unique']} ids")
    return problems


# --------------------------------------------------------------------------------------------
# Prefect: the server, the deployments, the workers, the runs
# --------------------------------------------------------------------------------------------


def deploy(server: Any, root: Path, url: str) -> None:
    """``consentflow deploy`` as an operator runs it."""
    env = server.client_env(root / "deploy-home")
    env.update(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", CONSENTFLOW_DATABASE_URL=url)
    done = subprocess.run(
        [sys.executable, "-m", "consentflow.cli", "deploy", "--project-dir", str(ROOT)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"consentflow deploy failed:\n{done.stdout}{done.stderr}")


def prepare_server(runs: int) -> None:
    """No automation acts on its own; ``runs`` expiry runs may run at once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            client.pause_automation(automation.id)
        found = client.read_deployment_by_name(EXPIRY)
        client.update_deployment(found.id, DeploymentUpdate(concurrency_limit=runs))


def ask(deployment: str, parameters: dict[str, Any], n: int) -> list[str]:
    """``n`` runs of ``deployment`` asked for at once; their ids."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        assert found.id is not None
        return [
            str(client.create_flow_run_from_deployment(found.id, parameters=parameters).id)
            for _ in range(n)
        ]


def flow_runs(run_ids: list[str]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[uuid.UUID(r) for r in run_ids])
                )
            )
        )


def all_final(run_ids: list[str]) -> bool:
    found = flow_runs(run_ids)
    return len(found) == len(run_ids) and all(
        r.state is not None and r.state.is_final() for r in found
    )


def cancel(run_ids: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            client.set_flow_run_state(uuid.UUID(run_id), Cancelling(), force=True)


def online(names: list[str]) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(POOL)
    up = {w.name for w in workers if str(getattr(w.status, "value", w.status)) == "ONLINE"}
    return set(names) <= up


def shares(engine: Engine, run_ids: list[str], outcome: str) -> dict[str, int]:
    """Items with ``outcome`` per worker, from the runs' end entries and the runs' labels."""
    worker_of = {str(r.id): r.labels.get("prefect.worker.name", "?") for r in flow_runs(run_ids)}
    out: Counter[str] = Counter()
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT run_id, detail FROM audit_entry WHERE action = 'flow.run'"
                " AND run_id = ANY(:ids)"
            ),
            {"ids": run_ids},
        ).all()
    for run_id, detail in rows:
        out[worker_of.get(str(run_id), "?")] += int(detail["totals"].get(outcome, 0))
    return dict(sorted(out.items()))


def first_start(run_ids: list[str]) -> datetime:
    """When the first of the runs started on a worker (its flow's process running)."""
    starts = [r.start_time for r in flow_runs(run_ids) if r.start_time is not None]
    return min(starts)


@dataclass
class Rate:
    """One piece of work: asked for -> done, and first run started -> done."""

    items: int
    seconds: float = 0.0  # from asking for the runs
    working: float = 0.0  # from the first run's start

    def measure(self, began: float, run_ids: list[str]) -> None:
        done_at, self.seconds = utcnow(), time.monotonic() - began
        self.working = (done_at - first_start(run_ids)).total_seconds()

    def __str__(self) -> str:
        return (
            f"{self.items / self.seconds:,.0f}/s asked->done ({self.seconds:.1f} s),"
            f" {self.items / self.working:,.0f}/s first start->done ({self.working:.1f} s)"
        )


@dataclass
class Phase:
    workers: int
    expiry: Rate
    propagation: Rate
    expiry_shares: dict[str, int] = field(default_factory=dict)
    propagate_shares: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def run_phase(
    args: argparse.Namespace, server: Any, root: Path, receivers: Receivers, k: int
) -> Phase:
    from tests.support.workers import Worker

    url, drop = new_database(args.url, f"w{k}")
    engine = db.make_engine(url)
    started: list[Worker] = []
    phase = Phase(k, Rate(args.consents), Rate(args.consents))
    try:
        fill_ledger(engine, args.consents, receivers.ports[0])
        receivers.stats()  # reset its counts
        names = [f"bench-{k}-{chr(ord('a') + i)}" for i in range(k)]
        for name in names:
            env = server.client_env(root / f"{name}-home")
            env.update(
                PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
                PREFECT_LOGGING_EXTRA_LOGGERS="consentflow",
                CONSENTFLOW_DATABASE_URL=url,
                CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            )
            options = ["--name", name, "--limit", str(args.limit)]
            started.append(Worker(env, root / f"{name}.log", POOL, options).start())
        wait_for(lambda: online(names), f"{k} worker(s) online", 300)

        began = time.monotonic()
        expiry = ask(EXPIRY, {"batch_size": args.batch_size}, args.runs)
        wait_for(
            lambda: scalar(engine, "SELECT count(*) FROM consent WHERE state = 'given'") == 0,
            "every consent expired",
        )
        phase.expiry.measure(began, expiry)
        wait_for(lambda: all_final(expiry), "the expiry runs ending")
        phase.expiry_shares = shares(engine, expiry, "expired")

        began = time.monotonic()
        loop = {"run_seconds": 900, "loops": 32, "per_endpoint": args.per_endpoint}
        loops = ask(PROPAGATE, loop, k * args.limit)
        wait_for(
            lambda: scalar(engine, "SELECT count(*) FROM delivery WHERE state = 'pending'") == 0,
            "every delivery delivered",
        )
        phase.propagation.measure(began, loops)
        cancel(loops)
        wait_for(lambda: all_final(loops), "the delivery loops cancelled", 300)
        phase.propagate_shares = shares(engine, loops, "delivered")
        phase.problems = check(engine, args.consents, receivers.stats())
    finally:
        for worker in started:
            worker.stop()
        engine.dispose()
        drop()
    return phase


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=os.environ.get(
            "CONSENTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server URL (a database of each phase's own is created and dropped)",
    )
    ap.add_argument("--consents", type=int, default=10_000, help="consents due (= deliveries)")
    ap.add_argument("--runs", type=int, default=4, help="expiry-sweep runs asked for at once")
    ap.add_argument("--batch-size", type=int, default=500, help="the expiry runs' batch size")
    ap.add_argument("--limit", type=int, default=2, help="flow runs each worker takes at once")
    ap.add_argument("--delay", type=float, default=20.0, help="the receiver's answer delay, ms")
    ap.add_argument("--per-endpoint", type=int, default=4, help="requests in flight per loop")
    args = ap.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.workers import SchedulerlessServer

    root = Path(tempfile.mkdtemp(prefix="consentflow-bench-workers-"))
    receivers = Receivers(1)
    receivers.delay(args.delay / 1000)
    server = SchedulerlessServer(root)
    phases: list[Phase] = []
    try:
        server.start()
        url, drop = new_database(args.url, "deploy")
        try:
            deploy(server, root, url)
        finally:
            drop()
        print(
            f"PostgreSQL, {os.cpu_count()} CPUs: {args.consents} consents due (one delivery each),"
            f" {args.runs} expiry runs of batches of {args.batch_size}; each worker --limit"
            f" {args.limit}; {args.per_endpoint} requests in flight per delivery loop; receiver"
            f" answers after {args.delay:g} ms",
            flush=True,
        )
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            prepare_server(args.runs)
            for k in (1, 2):
                phase = run_phase(args, server, root, receivers, k)
                phases.append(phase)
                print(
                    f"{k} worker(s): expiry {phase.expiry} (consents; by worker"
                    f" {phase.expiry_shares})\n             propagation {phase.propagation}"
                    f" (deliveries; {k * args.limit} loops; by worker {phase.propagate_shares})",
                    flush=True,
                )
                for problem in phase.problems:
                    print(f"  PROBLEM: {problem}", flush=True)
        one, two = phases
        for what, a, b in (
            ("expiry", one.expiry, two.expiry),
            ("propagation", one.propagation, two.propagation),
        ):
            print(
                f"two workers / one worker, {what}: {a.seconds / b.seconds:.2f}x asked->done,"
                f" {a.working / b.working:.2f}x first start->done"
            )
        if any(p.problems for p in phases):
            raise SystemExit(1)
    finally:
        server.stop()
        receivers.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

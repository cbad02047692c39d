"""Benchmark: commit of a withdrawal -> verified signed webhook (2xx) at the receiver.

Not a test. PostgreSQL only (the at-once wake-up is LISTEN/NOTIFY). It creates a database of its
own (dropped at the end), a purpose, ``2 x N`` subjects with consent, and one system subscribed
to a local webhook receiver on 127.0.0.1 that verifies every request's Standard Webhooks
signature (the public ``standardwebhooks`` package) before answering 204; a request that fails
verification is counted and answered 401 (so it is retried, and shows). Then two phases:

(a) the flow: the ``propagate`` flow runs in a subprocess (``propagate(run_seconds=...)``, an
    embedded Prefect as ``consentflow run propagate --local`` has, heartbeat on: as on a
    worker); once its loop is listening (its ``LISTEN`` backend appears in
    ``pg_stat_activity``), N withdrawals are committed through the ledger
    (``lifecycle.revoke``, one transaction each) at random intervals around ``--interval``;
(b) the baseline: the next N subjects withdraw the same way while a bare loop in a thread of
    this process polls the outbox every ``--poll`` seconds (claim due rows ``FOR UPDATE SKIP
    LOCKED``, sign, POST with httpx, mark delivered): what it costs without the flow, the engine
    and the wake-up.

For each withdrawal, the latency is from the moment its commit returned to the moment the
receiver verified its webhook (one clock: both in this process). It prints n, p50, p95, p99 and
max for each phase (the target for (a): p99 < 2 s) and any request that failed verification.

    python bench/revocation_latency.py                     # N=200, ~0.1 s apart
    python bench/revocation_latency.py --n 500 --interval 0.05
    python bench/revocation_latency.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# ------------------------------------------------------------------------------- receiver


class Receiver:
    """Verifies each request's signature; records when each subject's webhook was verified."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.seen: dict[str, float] = {}
        self.bad = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = receiver.webhook.verify(body, headers)
                    status = 204
                except Exception:
                    payload, status = None, 401
                at = time.perf_counter()
                with receiver.changed:
                    if payload is None:
                        receiver.bad += 1
                    else:
                        receiver.seen.setdefault(payload["data"]["subject"], at)
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, subjects: list[str], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: all(s in self.seen for s in subjects), timeout=timeout
            )


# ------------------------------------------------------------------------------------ setup


def make_database(admin_url: str) -> tuple[str, str]:
    from consentflow import db

    name = f"consentflow_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(db.normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(db.normalise_url(admin_url)).set(database=name)
    return name, url.render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    from consentflow import db

    admin = create_engine(db.normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def seed(engine: Engine, n: int, hook_url: str) -> str:
    """A purpose, ``n`` subjects with consent, one subscribed system; its webhook secret."""
    from consentflow import db, lifecycle, purposes, subjects, systems
    from consentflow.lifecycle import Actor, ImportRow
    from consentflow.models import State

    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        _, secret = systems.add(s, "crm", ["news"], webhook_url=hook_url)
        ids = [subjects.add(s, f"bench-{i}").id for i in range(n)]
    with db.session_scope(engine) as s:
        rows = [ImportRow(sid, "news", State.GIVEN) for sid in ids if sid is not None]
        lifecycle.import_consents(s, rows, Actor())
    assert secret
    return secret


def withdraw(engine: Engine, names: list[str], interval: float) -> dict[str, float]:
    """Revoke each subject's consent in its own transaction; when each commit returned."""
    from consentflow import db, lifecycle
    from consentflow.lifecycle import Actor

    committed: dict[str, float] = {}
    rng = random.Random(7)
    for name in names:
        with db.session_scope(engine) as s:
            lifecycle.revoke(s, name, "news", Actor())
        committed[name] = time.perf_counter()
        time.sleep(rng.uniform(0.5, 1.5) * interval)  # the arrival pattern, not a synchronisation
    return committed


# ---------------------------------------------------------------------------------- phases


def listening(engine: Engine) -> bool:
    with engine.connect() as conn:
        n = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN consentflow_outbox'"
        ).scalar_one()
    return bool(n)


def flow_phase(
    engine: Engine, url: str, receiver: Receiver, names: list[str], interval: float
) -> dict[str, float]:
    """(a) the propagate flow in a subprocess, woken by NOTIFY."""
    run_seconds = len(names) * interval * 1.5 + 20
    home = tempfile.mkdtemp(prefix="consentflow-bench-prefect-")
    env = {
        **os.environ,
        "CONSENTFLOW_DATABASE_URL": url,
        "CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "PREFECT_HOME": home,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PREFECT_API_URL", None)
    code = (
        "from flows.propagate import propagate\n"
        f"s = propagate(run_seconds={run_seconds})\n"
        "print(s.as_dict()['totals'], s.loop.as_dict())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=home)
    try:
        deadline = time.monotonic() + 180
        while not listening(engine):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the propagate flow did not start listening")
            time.sleep(0.2)  # polling for the loop to start, not a synchronisation
        committed = withdraw(engine, names, interval)
        if not receiver.wait_for(names, timeout=60):
            print(f"  (a) {len(names) - len(set(names) & set(receiver.seen))} never arrived")
        proc.wait(timeout=run_seconds + 120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    return committed


def bare_loop(engine: Engine, secret: str, poll: float, stop: threading.Event) -> None:
    """(b) the baseline: poll, claim, sign, post, mark delivered; no engine, no flow."""
    from consentflow.delivery import signing

    with httpx.Client(trust_env=False, timeout=15) as client:
        while not stop.is_set():
            with engine.begin() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT d.id, d.webhook_id, d.payload, s.webhook_url FROM delivery d "
                    "JOIN system s ON s.id = d.system_id WHERE d.state = 'pending' "
                    "AND d.next_attempt_at <= now() ORDER BY d.id LIMIT 50 "
                    "FOR UPDATE OF d SKIP LOCKED"
                ).all()
                done = []
                for row_id, webhook_id, payload, hook_url in rows:
                    body = payload.encode()
                    r = client.post(
                        hook_url, content=body, headers=signing.headers([secret], webhook_id, body)
                    )
                    if 200 <= r.status_code < 300:
                        done.append(row_id)
                if done:
                    conn.exec_driver_sql(
                        "UPDATE delivery SET state = 'delivered', attempts = attempts + 1, "
                        "delivered_at = now() WHERE id = ANY(%s)",
                        (done,),
                    )
            stop.wait(poll)  # the baseline's poll interval


def baseline_phase(
    engine: Engine, receiver: Receiver, secret: str, names: list[str], interval: float, poll: float
) -> dict[str, float]:
    stop = threading.Event()
    loop = threading.Thread(target=bare_loop, args=(engine, secret, poll, stop), daemon=True)
    loop.start()
    try:
        committed = withdraw(engine, names, interval)
        if not receiver.wait_for(names, timeout=60):
            print(f"  (b) {len(names) - len(set(names) & set(receiver.seen))} never arrived")
    finally:
        stop.set()
        loop.join(timeout=30)
    return committed


# ---------------------------------------------------------------------------------- report


def percentiles(latencies: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "n": len(latencies),
        "p50": qs[49],
        "p95": qs[94],
        "p99": qs[98],
        "max": max(latencies),
    }


def latencies(committed: dict[str, float], receiver: Receiver) -> list[float]:
    return [receiver.seen[s] - t for s, t in committed.items() if s in receiver.seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("CONSENTFLOW_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--n", type=int, default=200, help="withdrawals per phase")
    parser.add_argument("--interval", type=float, default=0.1, help="mean seconds between them")
    parser.add_argument("--poll", type=float, default=0.1, help="the baseline's poll interval")
    args = parser.parse_args()

    os.environ["CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
    from consentflow import db

    name, url = make_database(args.url)
    try:
        engine = db.make_engine(url)
        db.upgrade(engine)
        receiver = Receiver("whsec_" + "A" * 32)  # replaced below once the system exists
        secret = seed(engine, 2 * args.n, receiver.url())
        receiver.webhook = Webhook(secret)
        subjects = [f"bench-{i}" for i in range(2 * args.n)]
        results = {}
        committed = flow_phase(engine, url, receiver, subjects[: args.n], args.interval)
        results["(a) propagate flow, LISTEN/NOTIFY"] = percentiles(latencies(committed, receiver))
        committed = baseline_phase(
            engine, receiver, secret, subjects[args.n :], args.interval, args.poll
        )
        results[f"(b) bare loop, poll {args.poll:g} s"] = percentiles(
            latencies(committed, receiver)
        )
        for label, r in results.items():
            print(
                f"{label}: n={r['n']} p50={r['p50'] * 1000:.0f} ms p95={r['p95'] * 1000:.0f} ms "
                f"p99={r['p99'] * 1000:.0f} ms max={r['max'] * 1000:.0f} ms"
            )
        print(f"requests failing verification: {receiver.bad}")
        print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()}))
        engine.dispose()
    finally:
        drop_database(args.url, name)


if __name__ == "__main__":
    main()

"""Benchmark: webhook deliveries per second through the delivery engine, against bare httpx loops.

Not a test. It creates a database (SQLite in a temp dir, or a PostgreSQL database of its own with
``--url``, dropped at the end), one purpose and ``--endpoints`` systems (default 10) subscribed to
it, each at its own port of a receiver process on 127.0.0.1 (a minimal asyncio HTTP/1.1 server
with keep-alive, in a subprocess so that it does not share this process's interpreter lock; it
answers 200 after ``0`` or ``--delay`` ms and keeps a sample of requests, which this process
verifies with the public ``standardwebhooks`` package). Then, for each receiver delay (0 ms,
then 20 ms):

(a) the engine: ``N`` withdrawals are imported with propagation (``lifecycle.import_consents``,
    so ``N x endpoints`` deliveries are due), and ONE ``delivery.engine.deliver_due`` call drains
    them: exactly what each pass of the ``propagate`` flow's loop runs, without Prefect around it
    (the flow's defaults: batches of 50, 4 requests in flight per endpoint). Each delivery is
    claimed under a lease, signed (Standard Webhooks), sent through the SSRF-guarded client and
    its result recorded as its request completes. Timed from the call to its return; every
    delivery is checked ``delivered`` and the receiver counted once per webhook-id.
(b) the bare loops, no database: the same stored bodies, signed at send time with the same
    secrets, POSTed with plain ``httpx.AsyncClient``s: ``sequential`` (one request at a time,
    one client; at 20 ms on the first ``--sequential`` bodies only), and one lane per endpoint
    with the engine's in-flight count per endpoint over one shared client, and over a client
    per endpoint (what the engine does).

Targets (issue 11): at 0 ms the engine reaches >= 0.6x the fastest bare loop; at 20 ms it
reaches >= 20x the sequential sender (printed beside it: how far the fastest bare loop gets, the
ceiling this machine allows at the time).

    python bench/propagation.py                                   # SQLite, 500 x 10 deliveries each
    python bench/propagation.py --withdrawals 100 --delayed 100   # a quick run
    python bench/propagation.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/propagation.py --profile                         # cProfile of the engine at 0 ms
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import json
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# The receivers listen on loopback, which the SSRF guard refuses unless allowed.
os.environ["CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
os.environ.setdefault("CONSENTFLOW_SECRET_KEY", secrets.token_hex(32))

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
SAMPLE_EVERY = 97


# --------------------------------------------------------------------------------------------
# The receiver process
# --------------------------------------------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.delay = 0.0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.ids: set[str] = set()
        self.samples: list[tuple[dict[str, str], str]] = []

    def note(self, headers: dict[str, str], body: bytes) -> None:
        self.requests += 1
        self.ids.add(headers.get("webhook-id", ""))
        if self.requests % SAMPLE_EVERY == 1 and len(self.samples) < 100:
            self.samples.append((headers, base64.b64encode(body).decode()))


class _Http(asyncio.Protocol):
    """Just enough HTTP/1.1 for POSTs with a content-length, kept alive, answered in order."""

    def __init__(self, counts: _Counts) -> None:
        self.counts = counts
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.counts.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            size = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + size:
                return
            body = bytes(self.buf[end + 4 : end + 4 + size])
            del self.buf[: end + 4 + size]
            self.counts.note(headers, body)
            if self.counts.delay:
                asyncio.get_running_loop().call_later(self.counts.delay, self.reply)
            else:
                self.reply()

    def reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


async def _receiver_main(n: int) -> None:
    loop = asyncio.get_running_loop()
    counts = _Counts()
    servers = [
        await loop.create_server(lambda: _Http(counts), "127.0.0.1", 0, backlog=1024)
        for _ in range(n)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        out: dict[str, Any] = {"ok": cmd}
        if cmd == "delay":
            counts.delay = float(arg)
        elif cmd == "stats":
            out = {
                "requests": counts.requests,
                "unique": len(counts.ids),
                "connections": counts.connections,
                "samples": counts.samples,
            }
            counts.reset()
        print(json.dumps(out), flush=True)


class Receivers:
    """The receiver subprocess, driven over its stdin/stdout."""

    def __init__(self, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ports: list[int] = self._read()["ports"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the receiver process ended")
        out: dict[str, Any] = json.loads(line)
        return out

    def _say(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def delay(self, seconds: float) -> None:
        self._say(f"delay {seconds}")

    def stats(self) -> dict[str, Any]:
        return self._say("stats")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def make_database(url: str | None, tmp: Path) -> tuple[str, Any]:
    """A fresh, upgraded database; its URL and a function that removes it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from consentflow import db

    if url is None:
        return f"sqlite:///{tmp / 'propagation.db'}", lambda: None
    parsed = make_url(db.normalise_url(url))
    name = f"consentflow_bench_prop_{uuid.uuid4().hex[:8]}"
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

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def setup_systems(engine: Any, ports: list[int]) -> dict[str, str]:
    """One purpose and one system per port; system name -> webhook secret."""
    from consentflow import db, purposes, systems

    out = {}
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        for i, port in enumerate(ports):
            name = f"sys{i:02d}"
            _, secret = systems.add(s, name, ["news"], webhook_url=f"http://127.0.0.1:{port}/hook")
            assert secret
            out[name] = secret
    return out


def withdraw(engine: Any, n: int, tag: str) -> None:
    """``n`` new subjects imported as withdrawn, with propagation: ``n`` deliveries per system."""
    from consentflow import db, lifecycle, subjects
    from consentflow.lifecycle import Actor, ImportRow
    from consentflow.models import State

    with db.session_scope(engine) as s:
        ids = [subjects.add(s, f"{tag}-{i}").id for i in range(n)]
    with db.session_scope(engine) as s:
        rows = [ImportRow(sid, "news", State.WITHDRAWN) for sid in ids if sid is not None]
        lifecycle.import_consents(s, rows, Actor(), propagate=True)


def pending_bodies(engine: Any) -> list[tuple[str, str, str, bytes]]:
    """(url, system, webhook-id, body) of every pending delivery, oldest first."""
    from sqlmodel import col, select

    from consentflow import db
    from consentflow.models import Delivery, System

    with db.session_scope(engine, readonly=True) as s:
        rows = s.exec(
            select(System.webhook_url, System.name, Delivery.webhook_id, Delivery.payload)
            .join(System, col(System.id) == Delivery.system_id)
            .where(Delivery.state == "pending")
            .order_by(col(Delivery.id))
        ).all()
    return [(u or "", n, w, p.encode()) for u, n, w, p in rows]


def states(engine: Any) -> dict[str, int]:
    from sqlmodel import func, select

    from consentflow import db
    from consentflow.models import Delivery

    with db.session_scope(engine, readonly=True) as s:
        rows = s.exec(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return dict(rows)


# --------------------------------------------------------------------------------------------
# (a) the engine, (b) the bare loops
# --------------------------------------------------------------------------------------------


def run_engine(engine: Any, batch: int, per_endpoint: int, profile: bool) -> tuple[int, float]:
    from consentflow.delivery import engine as delivery

    options = delivery.Options(batch_size=batch, per_endpoint=per_endpoint, timeout=30.0)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    report = delivery.deliver_due(engine, options=options)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - started
    if profiler:
        stats = pstats.Stats(profiler).sort_stats("cumulative")
        stats.print_stats(35)
        stats.sort_stats("tottime").print_stats(25)
    return report.total(delivery.DELIVERED), elapsed


async def _bare(
    items: list[tuple[str, str, str, bytes]],
    secret_of: dict[str, str],
    per: int | None,
    *,
    client_per_endpoint: bool = False,
) -> int:
    """POST each body, signed now, with plain httpx clients: one request at a time (``per`` None)
    or one lane per endpoint with ``per`` in flight; one shared client, or one per endpoint."""
    import httpx

    from consentflow.delivery import signing

    ok = 0
    by_lane: dict[str, list[tuple[str, str, str, bytes]]] = {}
    for item in items:
        by_lane.setdefault(item[1] if per else "", []).append(item)

    def client() -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        return httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False)

    async def lane(http: httpx.AsyncClient, queue: list[tuple[str, str, str, bytes]]) -> None:
        sem = asyncio.Semaphore(per or 1)

        async def one(url: str, system: str, webhook_id: str, body: bytes) -> None:
            nonlocal ok
            async with sem:
                headers = signing.headers([secret_of[system]], webhook_id, body)
                response = await http.post(url, content=body, headers=headers)
                ok += 200 <= response.status_code < 300

        if per is None:
            for item in queue:
                await one(*item)
        else:
            await asyncio.gather(*(one(*item) for item in queue))

    if client_per_endpoint:

        async def own(queue: list[tuple[str, str, str, bytes]]) -> None:
            async with client() as http:
                await lane(http, queue)

        await asyncio.gather(*(own(q) for q in by_lane.values()))
    else:
        async with client() as http:
            await asyncio.gather(*(lane(http, q) for q in by_lane.values()))
    return ok


def run_bare(items: list[tuple[str, str, str, bytes]], *args: Any, **kw: Any) -> float:
    """Requests per second of ``_bare`` (every one answered 2xx)."""
    started = time.perf_counter()
    ok = asyncio.run(_bare(items, *args, **kw))
    elapsed = time.perf_counter() - started
    assert ok == len(items), (ok, len(items))
    return ok / elapsed


def verify_samples(stats: dict[str, Any], secret_of: dict[str, str]) -> int:
    """How many sampled requests fail Standard Webhooks verification with every secret."""
    from standardwebhooks import Webhook

    hooks = [Webhook(s) for s in secret_of.values()]
    bad = 0
    for headers, body in stats["samples"]:
        raw = base64.b64decode(body)
        if not any(_verifies(h, raw, headers) for h in hooks):
            bad += 1
    return bad


def _verifies(hook: Any, body: bytes, headers: dict[str, str]) -> bool:
    try:
        hook.verify(body, headers)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def phase(
    args: argparse.Namespace,
    engine: Any,
    receivers: Receivers,
    secret_of: dict[str, str],
    delay_ms: float,
    n: int,
    tag: str,
) -> dict[str, float]:
    receivers.delay(delay_ms / 1000)
    withdraw(engine, n, tag)
    items = pending_bodies(engine)
    total = len(items)
    receivers.stats()  # reset
    # (b) first, on the same bodies (the engine sends them next); the slow sequential sender on
    # the first --sequential bodies only
    seq = items[: min(total, args.sequential if delay_ms else total)]
    per = args.per_endpoint
    rates = {
        "sequential": run_bare(seq, secret_of, None),
        "concurrent": run_bare(items, secret_of, per),
        "clients": run_bare(items, secret_of, per, client_per_endpoint=True),
    }
    bare = receivers.stats()
    assert bare["requests"] == len(seq) + 2 * total, bare
    # (a)
    done, eng_t = run_engine(engine, args.batch_size, per, args.profile and not delay_ms)
    rates["engine"] = done / eng_t
    got = receivers.stats()
    left = states(engine)
    assert done == total and left.get("pending", 0) == 0, (done, total, left)
    assert got["requests"] == got["unique"] == total, got  # each delivery sent exactly once
    bad = verify_samples(got, secret_of) + verify_samples(bare, secret_of)
    assert bad == 0, f"{bad} sampled requests failed signature verification"
    verified = len(got["samples"]) + len(bare["samples"])
    print(
        f"\nreceiver delay {delay_ms:g} ms: {total:,} deliveries to {len(secret_of)} endpoints "
        f"({verified} sampled requests verified; connections opened: engine "
        f"{got['connections']}, bare loops {bare['connections']})"
    )
    lanes = f"{len(secret_of)} x {per} in flight"
    for label, key, unit in [
        ("(a) engine: one deliver_due pass", "engine", "deliveries/s"),
        ("(b) bare: sequential", "sequential", f"requests/s ({len(seq):,} requests)"),
        (f"(b) bare: one client, {lanes}", "concurrent", "requests/s"),
        (f"(b) bare: a client per endpoint, {lanes}", "clients", "requests/s"),
    ]:
        print(f"  {label:<50} {rates[key]:9,.0f} {unit}")
    return rates


def _met(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--withdrawals", type=int, default=500, help="x endpoints deliveries at 0 ms")
    ap.add_argument("--delayed", type=int, default=500, help="withdrawals at --delay ms")
    ap.add_argument("--delay", type=float, default=20.0, help="the slow receivers' delay, ms")
    ap.add_argument(
        "--sequential", type=int, default=300, help="requests of the slow sequential baseline"
    )
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--per-endpoint", type=int, default=4)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine at 0 ms")
    ap.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        asyncio.run(_receiver_main(args.receiver))
        return

    from consentflow import db, settings

    settings.get_settings.cache_clear()
    tmp = Path(tempfile.mkdtemp(prefix="consentflow-bench-prop-"))
    url, drop = make_database(args.url, tmp)
    receivers = Receivers(args.endpoints)
    try:
        engine = db.make_engine(url)
        db.upgrade(engine)
        secret_of = setup_systems(engine, receivers.ports)
        print(
            f"{engine.dialect.name}: {args.endpoints} endpoints, batches of {args.batch_size}, "
            f"{args.per_endpoint} in flight per endpoint; receivers in a subprocess"
        )
        fast = phase(args, engine, receivers, secret_of, 0, args.withdrawals, "fast")
        slow = phase(args, engine, receivers, secret_of, args.delay, args.delayed, "slow")
        best = max(fast["sequential"], fast["concurrent"], fast["clients"])
        r0 = fast["engine"] / best
        r20 = slow["engine"] / slow["sequential"]
        ceiling = max(slow["concurrent"], slow["clients"]) / slow["sequential"]
        print(f"\nat 0 ms: engine / fastest bare loop = {r0:.2f} (target >= 0.6: {_met(r0, 0.6)})")
        print(
            f"at {args.delay:g} ms: engine / sequential sender = {r20:.1f}x (target >= 20x: "
            f"{_met(r20, 20)}); the fastest bare loop reaches {ceiling:.1f}x on this machine now"
        )
    finally:
        receivers.close()
        drop()


if __name__ == "__main__":
    main()

"""Benchmark: the access check's latency, in process and over HTTP against ``consentflow serve``.

Not a test. It fills a database (SQLite in a temp dir, or a PostgreSQL database of its own with
``--url``, dropped at the end) with N consents (default 200,000; the issue's size is
``--consents 1000000``): N/4 subjects x 4 purposes, one history event each, 80 % given (1 in 50
of those past its validity, so answered ``expired``), 10 % withdrawn, 10 % refused, and one
system (``crm``) registered for three of the purposes. Then, for random subjects and purposes
(10 % of them unknown subjects):

(a) in process: ``access.check`` in a read-only unit of work of its own per check, as the API
    route runs it (``db.session_scope(readonly=True)``); p50, p99, checks/s. Beside it, the
    same answer as one hand-written SQL query through the bare driver (subject, purpose,
    system registration and consent joined), the floor an indexed lookup has on this database.
(b) over HTTP: ``consentflow serve`` in a subprocess (uvicorn, one process, as shipped) on
    127.0.0.1, ``GET /api/v1/check`` with a system token, driven by an async httpx load
    generator in a subprocess of its own with ``--connections`` concurrent keep-alive
    connections for ``--seconds``; latency per request (p50, p99) and requests/s. Every answer
    is checked 200 with the expected ``allowed``.
(c) ``POST /api/v1/check/batch`` (the transfer gate, 1,000 subjects per request; audited):
    in process (``transfers.check_batch``) and over HTTP, one request at a time; p50, p99 per
    batch and subjects/s.

    python bench/access_check.py                                 # SQLite, 200,000 consents
    python bench/access_check.py --consents 1000000
    python bench/access_check.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("CONSENTFLOW_SECRET_KEY", secrets.token_hex(32))

ROOT = Path(__file__).resolve().parents[1]
PURPOSES = ["news", "offers", "profiling", "partners"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_database(url: str | None, tmp: Path) -> tuple[str, Any]:
    """A fresh database URL and a function that removes it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from consentflow import db

    if url is None:
        return f"sqlite:///{tmp / 'access.db'}", lambda: None
    parsed = make_url(db.normalise_url(url))
    name = f"consentflow_bench_access_{uuid.uuid4().hex[:8]}"
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


def fill(engine: Any, n: int) -> str:
    """N consents generated inside the database (see the module docstring); a system token."""
    from sqlalchemy import text

    from consentflow import db, purposes, systems, tokens
    from consentflow.models import utcnow

    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES[:3])
        _, token = tokens.create(s, "bench", "system", system="crm")
    pg = engine.dialect.name == "postgresql"
    now = utcnow()
    p: dict[str, Any] = {"n": n, "subjects": (n + 3) // 4}
    # consent i: subject (i-1)/4+1, purpose (i-1)%4+1; i%10 < 8 given (1 in 50 of those lapsed),
    # 8 withdrawn, 9 refused
    if pg:
        p["now"] = now
        gen, cast = "generate_series(1, {}) AS i", "::bigint"
        ago = "CAST(:now AS timestamptz) - make_interval(days => {})"
        ahead = "CAST(:now AS timestamptz) + make_interval(days => {})"
        uid = "gen_random_uuid()"
    else:
        p["now"] = now.strftime("%Y-%m-%d %H:%M:%S")
        gen, cast = "g", ""
        ago = "datetime(:now, '-' || ({}) || ' days') || '.000000'"
        ahead = "datetime(:now, '+' || ({}) || ' days') || '.000000'"
        uid = "lower(hex(randomblob(16)))"
    rec = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {}) "
    state = "CASE WHEN i % 10 < 8 THEN 'given' WHEN i % 10 = 8 THEN 'withdrawn' ELSE 'refused' END"
    statements = [
        ("" if pg else rec.format(":subjects"))
        + "INSERT INTO subject (id, external_id, subject_ref, email, locale, last_seq, created_at,"
        " generation) SELECT i, 's' || i, 'ref' || i, NULL, 'en', 4, "
        + ago.format("400")
        + ", 1 FROM "
        + gen.format(":subjects"),
        ("" if pg else rec.format(":n"))
        + "INSERT INTO consent (id, subject_id, purpose_id, state, purpose_version, given_at,"
        " valid_until, updated_at, last_event_id, reminder_stage) SELECT i, (i - 1) / 4 + 1,"
        f" (i - 1) % 4 + 1, {state}, 1, "
        + ago.format("300")
        + ", CASE WHEN i % 10 >= 8 THEN NULL WHEN (i"
        + cast
        + " * 7919) % 50 = 0 THEN "
        + ago.format("1 + i % 30")
        + " ELSE "
        + ahead.format("1 + i % 300")
        + " END, "
        + ago.format("300")
        + f", {uid}, NULL FROM "
        + gen.format(":n"),
        "INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state,"
        " previous_state, purpose_version, occurred_at, recorded_at, valid_until, actor_type,"
        " actor, channel, reason, evidence, run_id) SELECT last_event_id, subject_id, purpose_id,"
        " purpose_id, 'import', state, NULL, 1, updated_at, updated_at, valid_until, 'import',"
        " 'bench', 'import', NULL, NULL, NULL FROM consent",
    ]
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {k: v for k, v in p.items() if f":{k}" in sql})
        if pg:
            for table in ("subject", "consent"):
                sequence = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(text(f"SELECT setval({sequence}, max(id)) FROM {table}"))
        conn.execute(text("ANALYZE"))
    return token


def expected(i: int, purpose: int, now_ok: bool = True) -> bool:
    """Whether consent (subject i, purpose index) allows ``crm`` (see ``fill``)."""
    if purpose >= 3:
        return False  # crm is not registered for the fourth purpose
    c = (i - 1) * 4 + purpose + 1
    return c % 10 < 8 and (c * 7919) % 50 != 0


def queries(n: int, k: int, seed: int) -> list[tuple[str, str, bool]]:
    """``k`` random (subject, purpose, expected allowed); 10 % unknown subjects."""
    rng = random.Random(seed)
    subjects = (n + 3) // 4
    out = []
    for _ in range(k):
        purpose = rng.randrange(4)
        if rng.random() < 0.1:
            out.append((f"nobody{rng.randrange(10**9)}", PURPOSES[purpose], False))
        else:
            i = rng.randint(1, subjects)
            if (i - 1) * 4 + purpose + 1 > n:
                i = 1
            out.append((f"s{i}", PURPOSES[purpose], expected(i, purpose)))
    return out


# --------------------------------------------------------------------------------------------
# (a) in process
# --------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, lat: list[float], rate: float, unit: str) -> None:
    print(
        f"  {label:<46} p50 {pct(lat, 0.5) * 1000:8.2f} ms  p99 {pct(lat, 0.99) * 1000:8.2f} ms"
        f"  {rate:9,.0f} {unit}"
    )


def in_process(engine: Any, qs: list[tuple[str, str, bool]]) -> tuple[list[float], float]:
    from consentflow import access, db

    lat = []
    started = time.perf_counter()
    for subject, purpose, allowed in qs:
        t0 = time.perf_counter()
        with db.session_scope(engine, readonly=True) as s:
            decision = access.check(s, subject, purpose, "crm")
        lat.append(time.perf_counter() - t0)
        assert decision.allowed is allowed, (subject, purpose, decision)
    return lat, len(qs) / (time.perf_counter() - started)


def bare_sql(engine: Any, qs: list[tuple[str, str, bool]]) -> tuple[list[float], float]:
    """The answer's rows in one query through the driver: the floor of an indexed lookup."""
    pg = engine.dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    sql = (
        "SELECT c.state, c.valid_until, c.purpose_version, c.last_event_id, sp.system_id"
        f" FROM purpose p JOIN system y ON y.name = {mark}"
        " LEFT JOIN system_purpose sp ON sp.system_id = y.id AND sp.purpose_id = p.id"
        f" LEFT JOIN subject s ON s.external_id = {mark}"
        " LEFT JOIN consent c ON c.subject_id = s.id AND c.purpose_id = p.id"
        f" WHERE p.key = {mark}"
    )
    raw = engine.raw_connection()
    cur = raw.cursor()
    lat = []
    started = time.perf_counter()
    for subject, purpose, _ in qs:
        t0 = time.perf_counter()
        if not pg:
            cur.execute("BEGIN")
        cur.execute(sql, ("crm", subject, purpose))
        cur.fetchall()
        if pg:
            raw.commit()
        else:
            cur.execute("COMMIT")
        lat.append(time.perf_counter() - t0)
    raw.close()
    return lat, len(qs) / (time.perf_counter() - started)


def batch_in_process(engine: Any, qs: list[list[str]]) -> tuple[list[float], float]:
    from consentflow import transfers
    from consentflow.lifecycle import Actor
    from consentflow.models import ActorType, Channel

    actor = Actor(ActorType.AGENT, Channel.API, name="bench")
    lat = []
    started = time.perf_counter()
    for ids in qs:
        t0 = time.perf_counter()
        result = transfers.check_batch("news", "crm", ids, actor, engine=engine)
        lat.append(time.perf_counter() - t0)
        assert len(result.decisions) == len(ids)
    return lat, sum(map(len, qs)) / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# (b) over HTTP
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(url: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONSENTFLOW_DATABASE_URL": url, "CONSENTFLOW_DATA_DIR": str(tmp)}
    exe = Path(sys.executable).with_name("consentflow")
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consentflow serve ended: see {tmp / 'serve.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("consentflow serve did not answer within 120 s")


async def _load(
    base: str, token: str, qs: list[Any], connections: int, seconds: float, batch: bool
) -> dict[str, Any]:
    import httpx

    headers = {"authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    lat: list[float] = []
    wrong = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal wrong
            i = offset
            while time.perf_counter() < stop:
                q = qs[i % len(qs)]
                i += connections
                t0 = time.perf_counter()
                if batch:
                    r = await client.post(
                        "/api/v1/check/batch",
                        json={"purpose": "news", "system": "crm", "subjects": q},
                    )
                    ok = r.status_code == 200 and len(r.json()["decisions"]) == len(q)
                else:
                    subject, purpose, allowed = q
                    r = await client.get(
                        "/api/v1/check", params={"subject": subject, "purpose": purpose}
                    )
                    ok = r.status_code == 200 and r.json()["allowed"] is allowed
                lat.append(time.perf_counter() - t0)
                wrong += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - started
    return {"lat": lat, "elapsed": elapsed, "wrong": wrong}


def load(
    base: str, token: str, qs: list[Any], connections: int, seconds: float, batch: bool
) -> Any:
    """The load generator in a subprocess of its own (so it does not share this one's lock)."""
    spec = {"base": base, "token": token, "qs": qs, "connections": connections,
            "seconds": seconds, "batch": batch}  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--load"],
        input=json.dumps(spec).encode(),
        capture_output=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _load_main() -> None:
    spec = json.loads(sys.stdin.read())
    keys = ("base", "token", "qs", "connections", "seconds", "batch")
    result = asyncio.run(_load(*(spec[k] for k in keys)))
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--consents", type=int, default=200_000)
    ap.add_argument("--checks", type=int, default=5000, help="in-process checks")
    ap.add_argument("--connections", type=int, default=8, help="concurrent HTTP connections")
    ap.add_argument("--seconds", type=float, default=15.0, help="HTTP load per run")
    ap.add_argument("--batch", type=int, default=1000, help="subjects per check/batch")
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        _load_main()
        return

    from consentflow import db, settings

    settings.get_settings.cache_clear()
    tmp = Path(tempfile.mkdtemp(prefix="consentflow-bench-access-"))
    url, drop = make_database(args.url, tmp)
    server = None
    try:
        engine = db.make_engine(url)
        db.upgrade(engine)
        started = time.perf_counter()
        token = fill(engine, args.consents)
        print(
            f"{engine.dialect.name}: {args.consents:,} consents (filled in "
            f"{time.perf_counter() - started:.1f} s); 2 cores shared with other jobs"
        )
        qs = queries(args.consents, args.checks, 1)
        in_process(engine, qs[:200])  # warm the caches and the statement cache
        print("(a) in process")
        lat, rate = in_process(engine, qs)
        line("access.check, read-only unit of work each", lat, rate, "checks/s")
        lat, rate = bare_sql(engine, qs)
        line("bare SQL: one indexed query through the driver", lat, rate, "queries/s")

        rng = random.Random(2)
        subjects = (args.consents + 3) // 4
        batches = [[f"s{rng.randint(1, subjects)}" for _ in range(args.batch)] for _ in range(20)]
        lat, rate = batch_in_process(engine, batches)
        line(f"transfers.check_batch, {args.batch:,} subjects each", lat, rate, "subjects/s")

        port = free_port()
        server = serve(url, port, tmp)
        base = f"http://127.0.0.1:{port}"
        print(
            f"(b) over HTTP: consentflow serve, {args.connections} connections, {args.seconds:g} s"
        )
        http_qs = queries(args.consents, 20000, 3)
        load(base, token, http_qs[:500], 2, 2.0, False)  # warm-up
        out = load(base, token, http_qs, args.connections, args.seconds, False)
        assert out["wrong"] == 0, f"{out['wrong']} wrong answers"
        line("GET /api/v1/check", out["lat"], len(out["lat"]) / out["elapsed"], "requests/s")
        out = load(base, token, http_qs, 1, args.seconds / 3, False)
        line("GET /api/v1/check, 1 connection", out["lat"], len(out["lat"]) / out["elapsed"],
             "requests/s")  # fmt: skip
        print("(c) over HTTP: check/batch, 1 connection")
        out = load(base, token, batches, 1, args.seconds / 3, True)
        assert out["wrong"] == 0, f"{out['wrong']} wrong answers"
        n = len(out["lat"]) * args.batch
        line(f"POST /api/v1/check/batch, {args.batch:,} subjects", out["lat"], n / out["elapsed"],
             "subjects/s")  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        drop()


if __name__ == "__main__":
    main()

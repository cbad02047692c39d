"""Benchmark: the transfer gate (``consentflow.transfers``) at scale.

Not a test. On PostgreSQL (``--url``) it reads the shared benchmark population (``_population``:
N subjects x 3 purposes, 80% given, 2% of those lapsed but not swept, the rest withdrawn, refused,
requested or expired), made afresh and filled set-based inside PostgreSQL, or with ``--reuse``
the database as an earlier fill left it; without ``--url`` it fills a SQLite file in a temporary
directory with N subjects x 3 purposes of the same mix (no events). Default N: 200,000. Then it
times:

- ``check/batch`` of 10,000 random existing subjects: the ledger call (``transfers.check_batch``,
  audit entry included) and ``POST /api/v1/check/batch`` on a real uvicorn server (a subprocess);
- the export of everyone cleared for one purpose: the ledger's pages written as JSON Lines in
  this process, and ``GET /api/v1/export/eligible`` (JSON Lines and CSV) streamed from the server,
  in rows per second, with the resident memory sampled as it goes (flat: no growth with rows).
  ``--only batch`` / ``--only export`` runs one half.

    python bench/transfer_gate.py                                  # SQLite file in a temp dir
    python bench/transfer_gate.py --url postgresql://postgres@127.0.0.1:5432/bench_people \\
        --reuse                                                    # a filled database
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from _population import prepare
from sqlalchemy import insert, text

from consentflow import db, purposes, systems, tokens, transfers, views
from consentflow.actors import Actor
from consentflow.models import ActorType, Channel, Consent, Subject, utcnow

PURPOSES = ["news", "offers", "partners"]
MIX = {"given": 80, "withdrawn": 8, "refused": 5, "requested": 4, "expired": 3}
WHO = Actor(ActorType.AGENT, Channel.SUPPORT, name="bench")


def fill(engine, n_subjects: int, batch: int = 20_000) -> None:
    """SQLite only (PostgreSQL: ``_population``): subjects and consents, no events."""
    rng = random.Random(42)
    now = utcnow()
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES)
        pids = {k: i.id for k, i in purposes.info(s).items()}
    states = [state for state, weight in MIX.items() for _ in range(weight)]
    started = time.perf_counter()
    for first in range(1, n_subjects + 1, batch):
        ids = range(first, min(first + batch, n_subjects + 1))
        subject_rows = [
            {
                "id": sid,
                "external_id": f"u{sid}",
                "subject_ref": uuid.uuid4().hex,
                "last_seq": len(PURPOSES),
                "created_at": now,
            }
            for sid in ids
        ]
        consent_rows = []
        for sid in ids:
            for key in PURPOSES:
                state = rng.choice(states)
                at = now - timedelta(days=rng.uniform(0, 360))
                lapsed = state == "given" and rng.random() < 0.02
                given = state in ("given", "expired")
                valid = at + timedelta(days=365) if given else None
                if lapsed:
                    valid = now - timedelta(days=rng.uniform(0.1, 5))
                consent_rows.append(
                    {
                        "subject_id": sid,
                        "purpose_id": pids[key],
                        "state": state,
                        "purpose_version": 1,
                        "given_at": at if given else None,
                        "valid_until": valid,
                        "updated_at": at,
                        "last_event_id": uuid.uuid4(),
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(Subject.__table__), subject_rows)
            conn.execute(insert(Consent.__table__), consent_rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    took = time.perf_counter() - started
    print(f"filled {n_subjects:,} subjects, {n_subjects * len(PURPOSES):,} consents in {took:.0f}s")


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = 20000 + os.getpid() % 20000
    env = {**os.environ, "CONSENTFLOW_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "uvicorn", "consentflow.web.app:create_app", "--factory"]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def batch_baseline(engine, ids: list[str]) -> float:
    """The floor of a batch check: its one join for all 10,000 ids through the bare driver
    cursor, rows fetched as they come (no types, no judgement, no audit entry)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        marks = ",".join(["%s" if engine.dialect.name == "postgresql" else "?"] * len(ids))
        t0 = time.perf_counter()
        cur.execute(
            "SELECT s.external_id, c.state, c.purpose_version, c.valid_until, c.last_event_id "
            "FROM subject s LEFT JOIN consent c ON c.subject_id = s.id AND c.purpose_id = 1 "
            f"WHERE s.external_id IN ({marks})",
            ids,
        )
        cur.fetchall()
        return time.perf_counter() - t0
    finally:
        raw.close()


def bench_batch(engine, base: str, token: str, n_subjects: int, repeat: int) -> None:
    rng = random.Random(7)
    asks = [[f"u{rng.randint(1, n_subjects)}" for _ in range(10_000)] for _ in range(repeat)]
    ledger, api = [], []
    for ids in asks:
        t0 = time.perf_counter()
        result = transfers.check_batch("news", "crm", ids, WHO, engine=engine)
        ledger.append(time.perf_counter() - t0)
    body = {"purpose": "news", "system": "crm"}
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        for ids in asks:
            t0 = time.perf_counter()
            r = http.post(f"{base}/api/v1/check/batch", json={**body, "subjects": ids})
            r.raise_for_status()
            api.append(time.perf_counter() - t0)
    floor = [batch_baseline(engine, ids) for ids in asks]
    for name, times in (
        ("baseline: bare cursor", floor),
        ("ledger check_batch", ledger),
        ("POST /api/v1/check/batch", api),
    ):
        print(
            f"{name:<28} 10,000 subjects: median {statistics.median(times) * 1000:.0f} ms, "
            f"max {max(times) * 1000:.0f} ms ({len(times)} runs; {result.allowed:,} cleared)"
        )


def baseline(engine) -> float:
    """The floor, in rows per second: the rows an export reads (given consents of one purpose
    with their subject's id), through the bare driver cursor in one query, written as
    tab-separated text: no keyset pages, no types, no judgement, no JSON."""
    sql = (
        "SELECT s.external_id, c.last_event_id, c.purpose_version, c.valid_until "
        "FROM consent c JOIN subject s ON s.id = c.subject_id "
        "WHERE c.purpose_id = 1 AND c.state = 'given' ORDER BY c.subject_id"
    )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        t0 = time.perf_counter()
        cur.execute(sql)
        rows = 0
        while batch := cur.fetchmany(5000):
            "".join("\t".join(map(str, r)) + "\n" for r in batch)
            rows += len(batch)
        took = time.perf_counter() - t0
    finally:
        raw.close()
    print(f"baseline: bare cursor, text  {rows:,} rows in {took:.1f}s: {rows / took:,.0f} rows/s")
    return rows / took


def bench_ledger_export(engine) -> None:
    export = transfers.open_export("news", "crm", WHO, engine=engine)
    rss, size = [], 0
    t0 = time.perf_counter()
    for page in export.pages():
        size += len(views.eligible_jsonl(page))
        rss.append(rss_kib())
    took = time.perf_counter() - t0
    export.finish()
    print(
        f"ledger export (JSON Lines)   {export.count:,} rows in {took:.1f}s: "
        f"{export.count / took:,.0f} rows/s, {size / 2**20:.0f} MiB; RSS after the first page "
        f"{rss[0] / 1024:.0f} MiB, at most {max(rss) / 1024:.0f} MiB"
    )


def bench_api_export(base: str, token: str, server: int, fmt: str) -> None:
    rows, rss, size = 0, [rss_kib(server)], 0
    params = {"purpose": "news", "system": "crm", "format": fmt}
    t0 = time.perf_counter()
    first = None
    with httpx.stream(
        "GET",
        f"{base}/api/v1/export/eligible",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as r:
        for chunk in r.iter_bytes():
            if first is None:
                first = time.perf_counter() - t0
            rows += chunk.count(b"\n")
            size += len(chunk)
            if rows // 50_000 > (rows - chunk.count(b"\n")) // 50_000:
                rss.append(rss_kib(server))
    took = time.perf_counter() - t0
    rows -= fmt == "csv"  # the header
    print(
        f"GET export/eligible ({fmt:<5})  {rows:,} rows in {took:.1f}s: {rows / took:,.0f} rows/s, "
        f"{size / 2**20:.0f} MiB, first byte after {first * 1000:.0f} ms; server RSS before "
        f"{rss[0] / 1024:.0f} MiB, during {min(rss[1:] or rss) / 1024:.0f}-"
        f"{max(rss) / 1024:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL URL of a database to create afresh")
    parser.add_argument("--subjects", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--reuse", action="store_true", help="use the --url database as an earlier fill left it"
    )
    parser.add_argument("--only", choices=["batch", "export"], help="run one half")
    args = parser.parse_args()
    if args.url:
        url = args.url
        engine, n = prepare(url, args.subjects, args.reuse)
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
        engine, n = db.make_engine(url), args.subjects
        db.upgrade(engine)
        fill(engine, n)
    with db.session_scope(engine) as s:
        token = tokens.create(s, f"bench-{uuid.uuid4().hex[:8]}", "compliance")[1]
    proc, base = serve(url)
    try:
        if args.only != "export":
            bench_batch(engine, base, token, n, args.repeat)
        if args.only != "batch":
            baseline(engine)
            bench_ledger_export(engine)
            for fmt in ("jsonl", "csv"):
                bench_api_export(base, token, proc.pid, fmt)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()

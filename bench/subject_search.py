"""Benchmark: finding a person and their whole record (``consentflow.lookup``) at scale.

Not a test. Reads the shared benchmark population on PostgreSQL (``_population``: N subjects,
default 100,000, each with an email address, 3 consents and their events, 4 audit entries,
open requests and deliveries), made afresh and filled set-based inside PostgreSQL, or with
``--reuse`` the database as an earlier fill left it; then times, for random existing subjects:

- ``lookup.search`` by external id, by email address and by subject reference, and a query
  matching nobody (a 404), each in a read-only unit of work of its own, as a request has;
- ``lookup.overview`` and its output model (``SubjectOverviewOut``), the subject page's data;
- the same-run baseline: the bare indexed ``SELECT`` of the subject row through the driver's
  cursor (no ORM, no key, no output model), for each search kind;
- optionally (``--http``) ``GET /api/v1/subjects?q=`` and ``/overview`` on a real uvicorn
  server (a subprocess) with a support token.

It prints p50 / p99 per series and ``EXPLAIN`` of the search's statements (each must use an
index: ``ix_subject_email``, ``uq_subject_external_id``, ``uq_subject_subject_ref``).

    python bench/_population.py --url postgresql://postgres@127.0.0.1:5432/bench_people \\
        --subjects 1000000
    python bench/subject_search.py --url postgresql://postgres@127.0.0.1:5432/bench_people \\
        --reuse --http
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _population import prepare
from transfer_gate import serve

from consentflow import db, keys, lookup, subjects, tokens
from consentflow.errors import NotFound
from consentflow.views import SubjectOverviewOut


def pct(times: list[float], p: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def report(name: str, times: tuple[list[float], float]) -> None:
    wall, cpu = times
    print(
        f"{name:<44} p50 {pct(wall, 50):7.2f} ms  p99 {pct(wall, 99):7.2f} ms  "
        f"max {max(wall) * 1000:7.2f} ms  this process's CPU {cpu * 1000:6.2f} ms/call "
        f"({len(wall)} runs)",
        flush=True,
    )


def timed(fn, args_list) -> tuple[list[float], float]:
    """Wall time of each call, and this process's mean CPU time per call."""
    out = []
    cpu0 = time.process_time()
    for a in args_list:
        t0 = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t0)
    return out, (time.process_time() - cpu0) / len(args_list)


def explain(engine, secret: bytes) -> None:
    """The plans of the search's statements (as ``lookup`` issues them, literal values)."""
    ext = "u12345"
    refs = ", ".join(f"'{subjects.reference(secret, ext, g)}'" for g in range(1, 9))
    statements = {
        "email": "SELECT * FROM subject WHERE email IN ('user12345@example.com') ORDER BY id",
        "external id / reference": (
            f"SELECT * FROM subject WHERE subject_ref IN ({refs}) OR external_id = '{ext}' "
            f"OR subject_ref = '{ext}' ORDER BY id"
        ),
        "overview deliveries": (
            "SELECT d.id FROM delivery d JOIN consent_event e ON e.id = d.event_id "
            "WHERE e.subject_id = 12345"
        ),
        "overview audit": (
            f"SELECT seq FROM audit_entry WHERE subject_ref = "
            f"'{subjects.reference(secret, ext)}' ORDER BY seq DESC LIMIT 501"
        ),
    }
    with engine.connect() as conn:
        for name, sql in statements.items():
            plan = [r[0] for r in conn.execute(text(f"EXPLAIN {sql}"))]
            print(f"EXPLAIN {name}:\n    " + "\n    ".join(plan))


# Long: the series are timed one after another, each over the same random subjects.
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="PostgreSQL URL of a database to make afresh")
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--http", action="store_true", help="also time the API on uvicorn")
    parser.add_argument("--reuse", action="store_true", help="use the database a fill left")
    args = parser.parse_args()
    url = args.url
    engine, n = prepare(url, args.subjects, args.reuse)
    with db.session_scope(engine) as s:
        secret = keys.reference_key(s)
        token = tokens.create(s, f"bench-{uuid.uuid4().hex[:8]}", "support")[1]
    explain(engine, secret)
    rng = random.Random(7)
    picks = [rng.randint(1, n) for _ in range(args.samples)]
    queries = {
        "external id": [f"u{k}" for k in picks],
        "email": [f"user{k}@example.com" for k in picks],
        "subject reference": [subjects.reference(secret, f"u{k}") for k in picks],
    }
    baseline_sql = {
        "external id": "SELECT * FROM subject WHERE external_id = %s",
        "email": "SELECT * FROM subject WHERE email = %s",
        "subject reference": "SELECT * FROM subject WHERE subject_ref = %s",
    }

    def search(q: str) -> None:
        with db.session_scope(engine, readonly=True) as s:
            assert lookup.search(s, q)

    def nobody(q: str) -> None:
        with db.session_scope(engine, readonly=True) as s:
            try:
                lookup.search(s, q)
            except NotFound:
                return
            raise AssertionError("found somebody")

    def page(ext: str) -> None:
        with db.session_scope(engine, readonly=True) as s:
            SubjectOverviewOut.of(lookup.overview(s, ext))

    raw = engine.raw_connection()
    cur = raw.cursor()

    def bare(sql: str):
        def run(q: str) -> None:
            cur.execute(sql, (q,))
            assert cur.fetchall()
            raw.rollback()

        return run

    for name, qs in queries.items():
        search(qs[0])  # warm the engine's pool and caches
        report(f"baseline: bare SELECT by {name}", timed(bare(baseline_sql[name]), qs))
        report(f"lookup.search by {name}", timed(search, qs))
    report("lookup.search, nobody (404)", timed(nobody, [f"nobody{k}" for k in picks]))
    report("lookup.overview + SubjectOverviewOut", timed(page, queries["external id"]))
    raw.close()
    if args.http:
        proc, base = serve(url)
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:

                def get(path: str, **params: str):
                    def run(q: str) -> None:
                        r = c.get(path.format(q=q), params={k: q for k in params})
                        assert r.status_code == 200, r.text

                    return run

                for name, qs in queries.items():
                    get("/api/v1/subjects", q="")(qs[0])
                    series = timed(get("/api/v1/subjects", q=""), qs)
                    report(f"GET /api/v1/subjects?q= ({name})", series)
                report(
                    "GET /api/v1/subjects/{id}/overview",
                    timed(get("/api/v1/subjects/{q}/overview"), queries["external id"]),
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()

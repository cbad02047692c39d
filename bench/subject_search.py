"""Benchmark: finding a person and their whole record (``consentflow.lookup``) at scale.

Not a test. Creates a PostgreSQL database of its own (dropped and made afresh) and fills it with
N subjects (default 100,000), each with an email address, 3 consents (80% given, the rest
withdrawn, refused, requested or expired), 3 consent events, 4 chained audit entries (a valid
hash chain: ``subject.created`` and one ``consent.*`` per event) and, for each withdrawn
consent, one delivery to a system; then times, for random existing subjects:

- ``lookup.search`` by external id, by email address and by subject reference, and a query
  matching nobody (a 404), each in a read-only unit of work of its own, as a request has;
- ``lookup.overview`` and its output model (``SubjectOverviewOut``), the subject page's data;
- the same-run baseline: the bare indexed ``SELECT`` of the subject row through the driver's
  cursor (no ORM, no key, no output model), for each search kind;
- optionally (``--http``) ``GET /api/v1/subjects?q=`` and ``/overview`` on a real uvicorn
  server (a subprocess) with a support token.

It prints p50 / p99 per series and ``EXPLAIN`` of the search's statements (each must use an
index: ``ix_subject_email``, ``uq_subject_external_id``, ``uq_subject_subject_ref``).

    python bench/subject_search.py --url postgresql://postgres@127.0.0.1:5432/bench_search \\
        --subjects 1000000 --http
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
from transfer_gate import fresh, serve

from consentflow import db, keys, lookup, purposes, subjects, systems, tokens
from consentflow.errors import NotFound
from consentflow.models import utcnow
from consentflow.views import SubjectOverviewOut

PURPOSES = ["news", "offers", "partners"]
MIX = {"given": 80, "withdrawn": 8, "refused": 5, "requested": 4, "expired": 3}
ACTION = {"given": "grant", "withdrawn": "revoke", "refused": "refuse", "requested": "request"}
ACTION["expired"] = "expire"


_STATE = (
    "CASE WHEN r < 80 THEN 'given' WHEN r < 88 THEN 'withdrawn' WHEN r < 93 THEN 'refused' "
    "WHEN r < 97 THEN 'requested' ELSE 'expired' END"
)
_ACTION = (
    "CASE state WHEN 'given' THEN 'grant' WHEN 'withdrawn' THEN 'revoke' WHEN 'refused' "
    "THEN 'refuse' WHEN 'requested' THEN 'request' ELSE 'expire' END"
)
_SUBJECTS = """
INSERT INTO subject (id, external_id, subject_ref, generation, email, last_seq, created_at)
SELECT g, 'u' || g,
       substr(encode(hmac(convert_to('subject:u' || g, 'UTF8'), :key, 'sha256'), 'hex'), 1, 32),
       1, 'user' || g || '@example.com', 3, :now - interval '400 days'
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g
"""
_CONSENTS = f"""
WITH picked AS (
    SELECT g, p.i, p.pid, ((g::bigint * 7919 + p.i * 104729) % 100) AS r,
           :now - make_interval(days => ((g::bigint * 37 + p.i * 11) % 360)::int) AS at
    FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g
    CROSS JOIN (VALUES (1, CAST(:p1 AS int)), (2, CAST(:p2 AS int)),
                (3, CAST(:p3 AS int))) AS p(i, pid)
), stated AS (
    SELECT *, {_STATE} AS state FROM picked
), e AS (
    INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state, purpose_version,
                               occurred_at, recorded_at, valid_until, actor_type, channel)
    SELECT gen_random_uuid(), g, pid, i, {_ACTION}, state, 1, at, at,
           CASE WHEN state IN ('given', 'expired') THEN at + interval '365 days' END,
           'subject', 'api'
    FROM stated
    RETURNING id, subject_id, purpose_id, state, occurred_at, valid_until
)
INSERT INTO consent (subject_id, purpose_id, state, purpose_version, given_at, valid_until,
                     updated_at, last_event_id)
SELECT subject_id, purpose_id, state, 1,
       CASE WHEN state IN ('given', 'expired') THEN occurred_at END, valid_until, occurred_at, id
FROM e
"""
# Synthetic hashes (the chain cannot be built set-based): the overview's verify then reports
# "modified" for these entries, after doing exactly the work it does for real ones.
_AUDIT = """
INSERT INTO audit_entry (seq, recorded_at, action, subject_ref, purpose_key, actor_type, actor,
                         channel, run_id, detail, prev_hash, hash)
SELECT CAST(:base AS bigint) + (s.id - 1) * 4 + 1, s.created_at, 'subject.created',
       s.subject_ref, NULL, NULL, NULL, NULL, NULL, '{"has_email": true, "locale": null}'::json,
       md5(s.subject_ref) || md5('p' || s.id), md5(s.subject_ref) || md5('h' || s.id)
FROM subject s WHERE s.id BETWEEN :lo AND :hi
UNION ALL
SELECT CAST(:base AS bigint) + (e.subject_id - 1) * 4 + 1 + e.seq, e.recorded_at,
       'consent.' || e.action,
       s.subject_ref, pk.key, 'subject', NULL, 'api', NULL,
       json_build_object('event_id', e.id, 'seq', e.seq, 'from', NULL, 'to', e.state,
                         'purpose_version', 1, 'occurred_at', e.occurred_at,
                         'valid_until', e.valid_until, 'reason', NULL, 'v', 2, 'evidence', NULL),
       md5(e.id::text) || md5('p' || e.id::text), md5(e.id::text) || md5('h' || e.id::text)
FROM consent_event e JOIN subject s ON s.id = e.subject_id JOIN purpose pk ON pk.id = e.purpose_id
WHERE e.subject_id BETWEEN :lo AND :hi
"""
_DELIVERIES = """
INSERT INTO delivery (system_id, event_id, webhook_id, event_type, payload, state, attempts,
                      next_attempt_at, created_at, delivered_at, last_status)
SELECT CAST(:system AS int), e.id, 'msg_' || md5(e.id::text), 'consent.withdrawn', '{}',
       'delivered', 1,
       e.recorded_at, e.recorded_at, e.recorded_at + interval '2 seconds', 200
FROM consent_event e WHERE e.state = 'withdrawn' AND e.subject_id BETWEEN :lo AND :hi
"""


def fill(engine, n: int, batch: int = 100_000, start: int = 1) -> None:
    """N subjects, 3 consents and events each, 4 audit entries each, a delivery per withdrawal:
    generated inside PostgreSQL (``generate_series``; the references with pgcrypto's HMAC, so
    they equal ``subjects.reference``), a batch of subjects per transaction."""
    now = utcnow()
    with db.session_scope(engine) as s:
        if start == 1:
            for key in PURPOSES:
                purposes.add(s, key, title=key.title(), validity_days=365)
            systems.add(s, "crm", PURPOSES, webhook_url="https://crm.example.com/hooks")
        pids = {k: i.id for k, i in purposes.info(s).items()}
        secret = keys.reference_key(s)
        base = s.execute(text("SELECT seq FROM audit_head WHERE id = 1")).one()[0]
        if start > 1:  # the entries of the subjects filled before follow the head's seq
            top = s.execute(text("SELECT max(seq) FROM audit_entry")).one()[0]
            base = top - 4 * (start - 1)
        system_id = s.execute(text("SELECT id FROM system WHERE name = 'crm'")).one()[0]
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pgcrypto"))
    for lo in range(start, n + 1, batch):
        hi = min(lo + batch - 1, n)
        p = {"lo": lo, "hi": hi, "now": now, "key": secret, "base": base, "system": system_id}
        p |= {"p1": pids["news"], "p2": pids["offers"], "p3": pids["partners"]}
        with engine.begin() as conn:
            for sql in (_SUBJECTS, _CONSENTS, _AUDIT, _DELIVERIES):
                conn.execute(text(sql), p)
        print(f"  {hi:,} subjects ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    with engine.begin() as conn:
        top = base + 4 * n
        last = conn.execute(text("SELECT hash FROM audit_entry WHERE seq = :s"), {"s": top}).one()
        conn.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": top, "h": last[0]}
        )
        conn.execute(text("SELECT setval('subject_id_seq', (SELECT max(id) FROM subject))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    took = time.perf_counter() - started
    print(f"filled {n:,} subjects, {3 * n:,} consents and events, {4 * n:,} audit entries in "
          f"{took:.0f}s")  # fmt: skip


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
    parser.add_argument("--reuse", action="store_true", help="keep a database filled before")
    parser.add_argument("--fill-from", type=int, help="go on filling a database from subject K")
    args = parser.parse_args()
    url = args.url if args.reuse or args.fill_from else fresh(args.url)
    engine = db.make_engine(url)
    if args.fill_from:
        fill(engine, args.subjects, start=args.fill_from)
    elif args.reuse:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    else:
        db.upgrade(engine)
        fill(engine, args.subjects)
    with db.session_scope(engine) as s:
        secret = keys.reference_key(s)
        token = tokens.create(s, f"bench-{uuid.uuid4().hex[:8]}", "support")[1]
    explain(engine, secret)
    rng = random.Random(7)
    picks = [rng.randint(1, args.subjects) for _ in range(args.samples)]
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

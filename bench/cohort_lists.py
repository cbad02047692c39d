"""Benchmark: the cohort lists (``reports.cohorts``, ``GET /api/v1/lists/...``) at scale.

Not a test. Creates a PostgreSQL database of its own (dropped and made afresh) and fills it,
through COPY, with N subjects (default 200,000) with an email address and a locale, 3 consents
each (80% given, the rest withdrawn, refused, requested or expired; "news" revised materially,
half its consents on the old notice), one event per consent, an open request for a tenth of
the consents, and a delivery per withdrawal (a fifth of them pending, a tenth dead). Then:

- list pages: ``GET /api/v1/lists/{cohort}`` on a real uvicorn server (a subprocess), at page 1
  and at deep pages (the cursor of a row 50% and 95% of the way through the list), p50 / p99,
  for several cohorts and filters; the same-run baseline is the bare keyset ``SELECT`` of the
  page's consent ids through the driver's cursor (no joins, no types, no JSON, no HTTP);
- exports: ``GET /api/v1/lists/consents/export`` streamed in JSON Lines and CSV at two sizes
  (``purpose=news``: N rows; no filter: 3N rows), rows/s and the server's resident memory sampled
  as it goes (flat: the same peak at both sizes); baseline: ``COPY (SELECT the same columns and
  joins) TO STDOUT`` through the driver, rows/s.

    python bench/cohort_lists.py --url postgresql://postgres@127.0.0.1:5432/bench_lists \\
        --subjects 1000000
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_gate import fresh, rss_kib, serve

from consentflow import db, purposes, systems, tokens
from consentflow.models import utcnow
from consentflow.reports import cohorts

PURPOSES = ["news", "offers", "partners"]
MIX = {"given": 80, "withdrawn": 8, "refused": 5, "requested": 4, "expired": 3}
ACTION = {"given": "grant", "withdrawn": "revoke", "refused": "refuse", "requested": "request"}
ACTION["expired"] = "expire"
LOCALES = ["en", "fr", "de", "es"]
CHANNELS = ["web", "email_link", "api", "support"]


def _copy(cur, table: str, columns: list[str], rows: list[tuple]) -> None:
    """Rows into ``table`` through COPY (text format)."""

    def cell(v: object) -> str:
        if v is None:
            return "\\N"
        return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(cell(v) for v in r) + "\n")
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(buf.getvalue())


# Long: one pass builds every table's rows for a batch of subjects.
def fill(engine, n: int, batch: int = 25_000) -> None:
    rng = random.Random(42)
    now = utcnow()
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES, webhook_url="https://crm.example.com/hooks")
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="News, revised")
        pids = {k: i.id for k, i in purposes.info(s).items()}
        system_id = s.execute(text("SELECT id FROM system WHERE name = 'crm'")).one()[0]
    states = [state for state, weight in MIX.items() for _ in range(weight)]
    started = time.perf_counter()
    delivery_id = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for first in range(1, n + 1, batch):
            subj, cons, evs, reqs, dels = [], [], [], [], []
            for sid in range(first, min(first + batch, n + 1)):
                ext = f"u{sid}"
                created = now - timedelta(days=400)
                locale = LOCALES[sid % 4]
                subj.append(
                    (sid, ext, uuid.uuid4().hex, 1, f"user{sid}@example.com", locale, 3, created)
                )
                for i, key in enumerate(PURPOSES, start=1):
                    state = rng.choice(states)
                    at = now - timedelta(days=rng.uniform(0, 360), seconds=rng.uniform(0, 86400))
                    given = state in ("given", "expired")
                    valid = at + timedelta(days=365) if given else None
                    version = 1 if key != "news" or rng.random() < 0.5 else 2
                    eid = uuid.uuid4()
                    cons.append(
                        (sid, pids[key], state, version, at if given else None, valid, at, eid)
                    )
                    evs.append(
                        (eid, sid, pids[key], i, ACTION[state], state, None, version, at, at,
                         valid, "subject", None, CHANNELS[rng.randrange(4)], None)
                    )  # fmt: skip
                    if rng.random() < 0.1:
                        kind = "reconsent" if key == "news" else "collection"
                        reqs.append(
                            (sid, pids[key], 2 if key == "news" else 1, kind, "open", at,
                             now + timedelta(days=rng.randint(1, 60)), 0)
                        )  # fmt: skip
                    if state == "withdrawn":
                        delivery_id += 1
                        roll = rng.random()
                        outcome = "pending" if roll < 0.2 else "dead" if roll < 0.3 else "delivered"
                        dels.append(
                            (delivery_id, system_id, eid, uuid.uuid4().hex, "consent.withdrawn",
                             "{}", outcome, 1, at, at, at if outcome == "delivered" else None,
                             200 if outcome == "delivered" else 500)
                        )  # fmt: skip
            _copy(cur, "subject", ["id", "external_id", "subject_ref", "generation", "email",
                                   "locale", "last_seq", "created_at"], subj)  # fmt: skip
            _copy(cur, "consent", ["subject_id", "purpose_id", "state", "purpose_version",
                                   "given_at", "valid_until", "updated_at", "last_event_id"],
                  cons)  # fmt: skip
            _copy(cur, "consent_event", ["id", "subject_id", "purpose_id", "seq", "action",
                                         "state", "previous_state", "purpose_version",
                                         "occurred_at", "recorded_at", "valid_until",
                                         "actor_type", "actor", "channel", "reason"],
                  evs)  # fmt: skip
            _copy(cur, "consent_request", ["subject_id", "purpose_id", "purpose_version", "kind",
                                           "status", "requested_at", "deadline",
                                           "followups_sent"], reqs)  # fmt: skip
            _copy(cur, "delivery", ["id", "system_id", "event_id", "webhook_id", "event_type",
                                    "payload", "state", "attempts", "next_attempt_at",
                                    "created_at", "delivered_at", "last_status"], dels)  # fmt: skip
            raw.commit()
            print(f"  {min(first + batch - 1, n):,} subjects", file=sys.stderr, flush=True)
        cur.execute("SELECT setval('subject_id_seq', (SELECT max(id) FROM subject))")
        cur.execute("SELECT setval('delivery_id_seq', greatest(1, (SELECT max(id) FROM delivery)))")
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    took = time.perf_counter() - started
    print(f"filled {n:,} subjects, {3 * n:,} consents and events, {delivery_id:,} deliveries "
          f"in {took:.0f}s")  # fmt: skip


def pct(times: list[float], p: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


KEYS: dict[tuple[str, float], str] = {}


def deep_cursors(engine, n: int) -> None:
    """Cursors of rows 50% and 95% through each benchmarked list, from its order key in SQL
    (the bare index, read once here, outside the timing)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT count(*) FROM consent")
        total = cur.fetchone()[0]
        for frac in (0.5, 0.95):
            cur.execute(
                "SELECT id FROM consent ORDER BY id OFFSET %s LIMIT 1", (int(total * frac),)
            )
            cid = cur.fetchone()[0]
            for name in ("consents", "not-reconfirmed"):
                KEYS[(name, frac)] = cohorts.encode_cursor(cohorts.Cohort(name), (cid,))
            cur.execute(
                "SELECT valid_until, id FROM consent WHERE state = 'given' AND valid_until > now()"
                " AND valid_until <= now() + interval '30 days' ORDER BY valid_until, id "
                "OFFSET %s LIMIT 1",
                (int(n * 0.07 * frac),),
            )
            row = cur.fetchone()
            if row:
                KEYS[("expiring", frac)] = cohorts.encode_cursor(cohorts.Cohort.EXPIRING, row)
            cur.execute(
                "SELECT recorded_at, id FROM consent_event WHERE action = 'revoke' "
                "ORDER BY recorded_at, id OFFSET %s LIMIT 1",
                (int(n * 3 * 0.08 * frac),),
            )
            row = cur.fetchone()
            if row:
                KEYS[("withdrawals", frac)] = cohorts.encode_cursor(
                    cohorts.Cohort.WITHDRAWALS, (row[0], row[1])
                )
            for name, table in (("requests", "consent_request"), ("deliveries", "delivery")):
                cur.execute(f"SELECT max(id) FROM {table}")
                top = cur.fetchone()[0] or 0
                KEYS[(name, frac)] = cohorts.encode_cursor(cohorts.Cohort(name), (int(top * frac),))
    finally:
        raw.close()


SERIES = [
    ("consents", {}),
    ("consents", {"purpose": "news", "state": "given"}),
    ("consents", {"locale": "fr", "channel": "web"}),
    ("not-reconfirmed", {}),
    ("not-reconfirmed", {"asked": "no"}),
    ("requests", {}),
    ("expiring", {}),
    ("withdrawals", {}),
    ("deliveries", {"status": "dead"}),
]


def bench_pages(base: str, token: str, repeat: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60) as http:
        for cohort, params in SERIES:
            for where, frac in (("page 1", None), ("50% deep", 0.5), ("95% deep", 0.95)):
                extra = {} if frac is None else {"cursor": KEYS.get((cohort, frac))}
                if frac is not None and extra["cursor"] is None:
                    continue
                times, rows = [], 0
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = http.get(f"/api/v1/lists/{cohort}", params={**params, **extra})
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text[:300]
                    rows = len(r.json()["rows"])
                label = f"{cohort} {params or ''} {where}"
                print(
                    f"  {label:<62} p50 {statistics.median(times) * 1000:6.1f} ms  "
                    f"p99 {pct(times, 99) * 1000:6.1f} ms  ({rows} rows)"
                )


def bench_inprocess(engine, repeat: int) -> None:
    """The route's own work without HTTP: filters, prepare, read_page, the page model as JSON,
    in a read-only unit of work; wall and CPU time of this process (the rest of the wall time
    is the database and, on a loaded machine, waiting for a core)."""
    from consentflow import views

    for cohort, params in SERIES:
        name = cohorts.Cohort(cohort)
        for where, frac in (("page 1", None), ("95% deep", 0.95)):
            cursor = KEYS.get((cohort, frac)) if frac else None
            if frac and cursor is None:
                continue
            after = cohorts.decode_cursor(name, cursor) if cursor else None
            wall, cpu = [], []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                with db.session_scope(engine, readonly=True) as s:
                    filters = cohorts.parse_filters(params)
                    q = cohorts.prepare(s, name, filters)
                    page = cohorts.read_page(s, name, q, after, 100)
                    model = cohorts.DEFINITIONS[name].model
                    views.ListPageOut(
                        cohort=cohort, filters=filters.given(), limit=100, next=None,
                        rows=[model.model_validate(r) for r in page.rows],
                    ).model_dump_json(exclude_unset=True)  # fmt: skip
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            label = f"{cohort} {params or ''} {where}"
            print(
                f"  {label:<62} wall p50 {statistics.median(wall) * 1000:6.1f} ms  "
                f"p99 {pct(wall, 99) * 1000:6.1f} ms  "
                f"CPU p50 {statistics.median(cpu) * 1000:5.1f} ms"
            )


def page_baseline(engine, repeat: int) -> None:
    """The floor of a page: the bare keyset SELECT of 100 consent ids after a deep id."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT max(id) FROM consent")
        top = cur.fetchone()[0]
        times = []
        for i in range(repeat):
            after = int(top * (0.5 if i % 2 else 0.95))
            t0 = time.perf_counter()
            cur.execute("SELECT id FROM consent WHERE id > %s ORDER BY id LIMIT 101", (after,))
            cur.fetchall()
            times.append(time.perf_counter() - t0)
        raw.commit()
    finally:
        raw.close()
    print(
        f"  baseline: bare keyset SELECT of 100 ids (deep)            p50 "
        f"{statistics.median(times) * 1000:6.1f} ms  p99 {pct(times, 99) * 1000:6.1f} ms"
    )


def copy_baseline(engine, purpose: str | None) -> float:
    """The floor of an export, rows/s: COPY (the same columns and joins) TO STDOUT."""
    where = f"WHERE p.key = '{purpose}'" if purpose else ""
    sql = (
        "COPY (SELECT s.external_id, p.key, c.state, c.purpose_version, e.channel, s.locale, "
        "c.given_at, c.valid_until, c.updated_at, c.last_event_id FROM consent c "
        "JOIN subject s ON s.id = c.subject_id JOIN purpose p ON p.id = c.purpose_id "
        f"JOIN consent_event e ON e.id = c.last_event_id {where} ORDER BY c.id) TO STDOUT"
    )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        rows = 0
        t0 = time.perf_counter()
        with cur.copy(sql) as copy:
            for chunk in copy:
                rows += bytes(chunk).count(b"\n")
        took = time.perf_counter() - t0
    finally:
        raw.close()
    print(f"  baseline: COPY TO STDOUT ({purpose or 'all'})  {rows:,} rows in {took:.1f}s: "
          f"{rows / took:,.0f} rows/s")  # fmt: skip
    return rows / took


def bench_export(base: str, token: str, server: int, fmt: str, params: dict) -> None:
    rows, rss, size = 0, [rss_kib(server)], 0
    t0 = time.perf_counter()
    first = None
    with httpx.stream(
        "GET",
        f"{base}/api/v1/lists/consents/export",
        params={**params, "format": fmt},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as r:
        for chunk in r.iter_bytes():
            if first is None:
                first = time.perf_counter() - t0
            lines = chunk.count(b"\n")
            if (rows + lines) // 50_000 > rows // 50_000:
                rss.append(rss_kib(server))
            rows += lines
            size += len(chunk)
    took = time.perf_counter() - t0
    rows -= fmt == "csv"  # the header
    print(
        f"  export {fmt:<5} {params.get('purpose', 'all'):<5} {rows:,} rows in {took:.1f}s: "
        f"{rows / took:,.0f} rows/s, {size / 2**20:.0f} MiB, first byte {first * 1000:.0f} ms; "
        f"server RSS before {rss[0] / 1024:.0f} MiB, peak {max(rss) / 1024:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="PostgreSQL URL of a database to make")
    parser.add_argument("--subjects", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's database")
    args = parser.parse_args()
    url = args.url if args.reuse else fresh(args.url)
    engine = db.make_engine(url)
    if not args.reuse:
        db.upgrade(engine)
        fill(engine, args.subjects)
    with db.session_scope(engine) as s:
        token = tokens.create(s, f"bench-{uuid.uuid4().hex[:6]}", "compliance")[1]
    deep_cursors(engine, args.subjects)
    proc, base = serve(url)
    try:
        print(f"list pages (limit 100), {args.repeat} requests each, HTTP on loopback:")
        page_baseline(engine, args.repeat)
        bench_pages(base, token, args.repeat)
        print("list pages in process (no HTTP): wall and this process's CPU:")
        bench_inprocess(engine, args.repeat)
        print("exports (GET /api/v1/lists/consents/export):")
        for purpose in ("news", None):
            copy_baseline(engine, purpose)
            for fmt in ("jsonl", "csv"):
                bench_export(base, token, proc.pid, fmt, {"purpose": purpose} if purpose else {})
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

"""Benchmark: the cohort lists (``reports.cohorts``, ``GET /api/v1/lists/...``) at scale.

Not a test. Reads the shared benchmark population on PostgreSQL (``_population``: N subjects,
default 200,000, with an email address and a locale, 3 consents each, 80% given, "news" revised
materially with half its consents on the old notice, one event per consent on varying channels,
an open request for a tenth of the consents, a delivery per withdrawal, a fifth of them pending
and a tenth dead), made afresh and filled set-based inside PostgreSQL, or with ``--reuse`` the
database as an earlier fill left it. Then:

- list pages: ``GET /api/v1/lists/{cohort}`` on a real uvicorn server (a subprocess), at page 1
  and at deep pages (the cursor of a row 50% and 95% of the way through the list), p50 / p99,
  for several cohorts and filters; the same-run baseline is the bare keyset ``SELECT`` of the
  page's consent ids through the driver's cursor (no joins, no types, no JSON, no HTTP);
- exports: ``GET /api/v1/lists/consents/export`` streamed in JSON Lines and CSV at two sizes
  (``purpose=news``: N rows; no filter: 3N rows), rows/s and the server's resident memory sampled
  as it goes (flat: the same peak at both sizes); baseline: ``COPY (SELECT the same columns and
  joins) TO STDOUT`` through the driver, rows/s. ``--only pages`` / ``--only exports`` runs one
  half.

    python bench/cohort_lists.py --url postgresql://postgres@127.0.0.1:5432/bench_people \\
        --reuse
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _population import prepare
from transfer_gate import rss_kib, serve

from consentflow import db, tokens
from consentflow.reports import cohorts


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
    parser.add_argument("--reuse", action="store_true", help="use the database a fill left")
    parser.add_argument("--only", choices=["pages", "exports"], help="run one half")
    args = parser.parse_args()
    url = args.url
    engine, n = prepare(url, args.subjects, args.reuse)
    with db.session_scope(engine) as s:
        token = tokens.create(s, f"bench-{uuid.uuid4().hex[:6]}", "compliance")[1]
    deep_cursors(engine, n)
    proc, base = serve(url)
    try:
        if args.only != "exports":
            print(f"list pages (limit 100), {args.repeat} requests each, HTTP on loopback:")
            page_baseline(engine, args.repeat)
            bench_pages(base, token, args.repeat)
            print("list pages in process (no HTTP): wall and this process's CPU:")
            bench_inprocess(engine, args.repeat)
        if args.only != "pages":
            print("exports (GET /api/v1/lists/consents/export):")
            for purpose in ("news", None):
                copy_baseline(engine, purpose)
                for fmt in ("jsonl", "csv"):
                    params = {"purpose": purpose} if purpose else {}
                    bench_export(base, token, proc.pid, fmt, params)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

"""Benchmark: the expiry sweep against hand-written set-based SQL doing the same writes.

Not a test. It fills a database with N consents (default 1,000,000: N/4 subjects x 4 purposes,
one history event each), D of them past their validity (default 250,000, spread over subjects
and purposes), copies it, and then expires the D due consents twice, once on each copy:

(a) the sweep: ``consentflow.sweeps.expire_batch`` (what each task of the expiry-sweep flow
    runs: ``lifecycle.expire_due`` with a flow run id), batch after batch until nothing is due,
    timed from the first batch to the last commit;
(b) the baseline: hand-written SQL through the bare driver, per batch of the same size and in
    the same order, one transaction each: select the due rows, set state/last event, insert one
    history row each, advance each subject's sequence number, append one hash-chained audit row
    each (hashed in Python: SQL cannot chain hashes), move the audit head. On PostgreSQL the
    writes are one statement per table per batch (``unnest`` arrays); on SQLite prepared
    statements over the batch.

(c) the flow: one real run of the ``expiry-sweep`` Prefect flow on a third copy, as
    ``consentflow run expiry-sweep`` starts it (embedded Prefect with the CLI's hermetic
    settings, Prefect's defaults otherwise): the same batches, each a Prefect task run, plus the
    run's own audit entry and summary artifact. Timed from the call to its return; the embedded
    server is started by a trivial flow run first, since a deployment's worker does not pay
    for that per run.

The copies are checked to hold the same number of expired consents, events and audit entries
afterwards (the flow's copy one audit entry more: the run's). It prints each rate, and the
ratios (a)/(b) and (c)/(b) against the same baseline (the target for (a) is >= 0.5). No webhooks
are subscribed, so no side writes outbox rows.

    python bench/expiry_sweep.py                                   # SQLite file in a temp dir
    python bench/expiry_sweep.py --consents 200000 --due 50000     # a quicker run
    python bench/expiry_sweep.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/expiry_sweep.py --profile                         # where the sweep spends time
    python bench/expiry_sweep.py --no-flow                         # (a) and (b) only
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from consentflow import db, purposes, settings, sweeps
from consentflow.models import utcnow

PURPOSES = ["news", "offers", "profiling", "partners"]
GENESIS = "0" * 64


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def fill(engine: Engine, n: int, due: int, as_of: datetime) -> None:
    """N consents, ``due`` of them ended before ``as_of``, generated inside the database."""
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
    pg = engine.dialect.name == "postgresql"
    n_subjects = (n + len(PURPOSES) - 1) // len(PURPOSES)
    # Consent i (1-based) belongs to subject (i-1)/4+1 and purpose (i-1)%4+1; it is due when
    # (i * 7919) % n < due, which picks exactly `due` consents spread evenly over the table.
    p = {"n": n, "due": due, "subjects": n_subjects, "as_of": as_of}
    if pg:
        p["as_of"] = as_of
        statements = [
            """INSERT INTO subject (id, external_id, subject_ref, email, locale, last_seq,
                                    created_at)
               SELECT i, 's' || i, 'ref' || i, NULL, 'en', 0, :as_of
               FROM generate_series(1, :subjects) AS i""",
            """INSERT INTO consent (id, subject_id, purpose_id, state, purpose_version, given_at,
                                    valid_until, updated_at, last_event_id, reminder_stage)
               SELECT i, (i - 1) / 4 + 1, (i - 1) % 4 + 1, 'given', 1,
                      :as_of - interval '300 days',
                      CASE WHEN (i::bigint * 7919) % :n < :due
                           THEN :as_of - make_interval(secs => 1 + (i % 86400))
                           ELSE :as_of + make_interval(days => 1 + (i % 300)) END,
                      :as_of - interval '300 days', gen_random_uuid(), NULL
               FROM generate_series(1, :n) AS i""",
        ]
    else:
        p["as_of"] = as_of.strftime("%Y-%m-%d %H:%M:%S")
        statements = [
            """WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :subjects)
               INSERT INTO subject (id, external_id, subject_ref, email, locale, last_seq,
                                    created_at)
               SELECT i, 's' || i, 'ref' || i, NULL, 'en', 0, :as_of || '.000000' FROM g""",
            """WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n)
               INSERT INTO consent (id, subject_id, purpose_id, state, purpose_version, given_at,
                                    valid_until, updated_at, last_event_id, reminder_stage)
               SELECT i, (i - 1) / 4 + 1, (i - 1) % 4 + 1, 'given', 1,
                      datetime(:as_of, '-300 days') || '.000000',
                      CASE WHEN (i * 7919) % :n < :due
                           THEN datetime(:as_of, '-' || (1 + i % 86400) || ' seconds')
                           ELSE datetime(:as_of, '+' || (1 + i % 300) || ' days') END
                        || '.000000',
                      datetime(:as_of, '-300 days') || '.000000', lower(hex(randomblob(16))), NULL
               FROM g""",
        ]
    statements += [
        # One grant event per consent (seq = its purpose's position), as an import would leave.
        """INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state,
               previous_state, purpose_version, occurred_at, recorded_at, valid_until, actor_type,
               actor, channel, reason, evidence, run_id)
           SELECT last_event_id, subject_id, purpose_id, purpose_id, 'import', 'given', NULL, 1,
                  given_at, given_at, valid_until, 'import', 'bench', 'import', NULL, NULL, NULL
           FROM consent""",
        """UPDATE subject SET last_seq = (SELECT count(*) FROM consent
                                          WHERE consent.subject_id = subject.id)""",
    ]
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {k: v for k, v in p.items() if f":{k}" in sql})
        if pg:
            for table in ("subject", "consent"):
                sequence = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(text(f"SELECT setval({sequence}, max(id)) FROM {table}"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))


def copy_database(url: str, engine: Engine, name: str) -> str:
    """A copy of the filled database; its URL."""
    engine.dispose()
    if engine.dialect.name == "sqlite":
        src = Path(make_url(url).database or "")
        dst = src.with_name(f"{name}.db")
        shutil.copy(src, dst)
        return f"sqlite:///{dst}"
    parsed = make_url(url)
    admin = create_engine(
        parsed.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------
# (a) the sweep, (b) the baseline
# --------------------------------------------------------------------------------------------


def run_sweep(engine: Engine, as_of: datetime, batch: int) -> int:
    done = 0
    ctx = sweeps.SweepContext(as_of, run_id="bench-sweep", engine=engine)
    for result in sweeps.drain(
        lambda size, cursor: sweeps.expire_batch(ctx, size, cursor),
        batch_size=batch,
    ):
        done += result.seen
    return done


def start_prefect() -> None:
    """Embedded Prefect with the CLI's settings (before Prefect is imported), then one trivial
    flow run so that the embedded server is up before anything is timed."""
    from consentflow.cli.run import _hermetic_prefect, _quiet_prefect_logs

    _hermetic_prefect()
    from prefect import flow

    _quiet_prefect_logs()

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()


def run_flow(url: str, as_of: datetime, batch: int) -> int:
    """(c): one run of the expiry-sweep flow on the database at ``url``; how many expired."""
    from flows import expiry_sweep

    os.environ["CONSENTFLOW_DATABASE_URL"] = url  # the flow's tasks use the default engine
    settings.get_settings.cache_clear()
    summary = expiry_sweep.expiry_sweep(as_of=as_of, batch_size=batch)
    assert summary.outcome == "completed", summary.outcome
    return summary.total("expired")


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_baseline(engine: Engine, as_of: datetime, batch: int) -> int:
    """Hand-written SQL through the bare driver (see the module docstring)."""
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    cur = raw.cursor()
    mark = "%s" if pg else "?"

    def q(sql: str) -> str:
        return sql.replace("?", mark)

    def ts(value: datetime) -> Any:
        return value if pg else value.strftime("%Y-%m-%d %H:%M:%S.%f")

    cur.execute("SELECT id, key FROM purpose")
    keys = dict(cur.fetchall())
    done = 0
    lock = " FOR UPDATE OF c, s SKIP LOCKED" if pg else ""
    while True:
        now = datetime.now(UTC)
        if not pg:
            cur.execute("BEGIN IMMEDIATE")
        cur.execute(
            q(
                "SELECT c.id, c.subject_id, c.purpose_id, c.purpose_version, c.valid_until,"
                " s.last_seq, s.subject_ref FROM consent c JOIN subject s ON s.id = c.subject_id"
                " WHERE c.state = 'given' AND c.valid_until <= ?"
                f" ORDER BY c.valid_until, c.id LIMIT {batch}{lock}"
            ),
            (ts(as_of),),
        )
        rows = cur.fetchall()
        if not rows:
            if pg:
                raw.rollback()
            else:
                cur.execute("ROLLBACK")
            break
        seqs: dict[int, int] = {}
        consents, events, audit_rows = [], [], []
        cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1" + (" FOR UPDATE" if pg else ""))
        head_seq, prev = cur.fetchone()
        now_db, now_iso = ts(now), _iso(now)
        for cid, sid, pid, version, valid_until, last_seq, ref in rows:
            seq = seqs[sid] = seqs.get(sid, last_seq) + 1
            eid = uuid.uuid4()
            # The validity end as stored is both the event's valid_until and its occurred_at.
            ended_iso = valid_until.isoformat() if pg else valid_until.replace(" ", "T") + "+00:00"
            consents.append((cid, eid if pg else eid.hex))
            events.append((eid if pg else eid.hex, sid, pid, seq, version, valid_until, now_db))
            detail = orjson.dumps(
                {"event_id": str(eid), "seq": seq, "from": "given", "to": "expired",
                 "purpose_version": version, "occurred_at": ended_iso},
                option=orjson.OPT_SORT_KEYS,
            )  # fmt: skip
            head_seq += 1
            header = [head_seq, now_iso, "consent.expire", ref, keys[pid], "system", "consentflow",
                      "system", "bench-baseline"]  # fmt: skip
            digest = hashlib.sha256(
                b"%s\n%s\n%s" % (prev.encode(), orjson.dumps(header), detail)
            ).hexdigest()
            audit_rows.append((head_seq, now_db, ref, keys[pid], detail.decode(), prev, digest))
            prev = digest
        subjects = list(seqs.items())
        if pg:
            cur.execute(
                "UPDATE consent c SET state = 'expired', updated_at = %s, last_event_id = v.e,"
                " reminder_stage = NULL FROM unnest(%b::int[], %b::uuid[]) AS v(i, e)"
                " WHERE c.id = v.i",
                (now, [c[0] for c in consents], [c[1] for c in consents]),
            )
            cur.execute(
                "INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state,"
                " previous_state, purpose_version, occurred_at, recorded_at, valid_until,"
                " actor_type, actor, channel, run_id) SELECT e, s, p, q, 'expire', 'expired',"
                " 'given', v, o, r, o, 'system', 'consentflow', 'system', 'bench-baseline'"
                " FROM unnest(%b::uuid[], %b::int[], %b::int[], %b::int[], %b::int[],"
                " %b::timestamptz[], %b::timestamptz[]) AS x(e, s, p, q, v, o, r)",
                [list(col) for col in zip(*events, strict=True)],
            )
            cur.execute(
                "UPDATE subject SET last_seq = v.q FROM unnest(%b::int[], %b::int[]) AS v(i, q)"
                " WHERE subject.id = v.i",
                ([s for s, _ in subjects], [q_ for _, q_ in subjects]),
            )
            cur.execute(
                "INSERT INTO audit_entry (seq, recorded_at, action, subject_ref, purpose_key,"
                " actor_type, actor, channel, run_id, detail, prev_hash, hash)"
                " SELECT q, r, 'consent.expire', s, p, 'system', 'consentflow', 'system',"
                " 'bench-baseline', d::json, h0, h FROM unnest(%b::int[], %b::timestamptz[],"
                " %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
                " AS x(q, r, s, p, d, h0, h)",
                [list(col) for col in zip(*audit_rows, strict=True)],
            )
            cur.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (head_seq, prev))
            raw.commit()
        else:
            cur.executemany(
                "UPDATE consent SET state = 'expired', updated_at = ?, last_event_id = ?,"
                " reminder_stage = NULL WHERE id = ?",
                [(now_db, e, c) for c, e in consents],
            )
            cur.executemany(
                "INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state,"
                " previous_state, purpose_version, occurred_at, recorded_at, valid_until,"
                " actor_type, actor, channel, run_id) VALUES (?, ?, ?, ?, 'expire', 'expired',"
                " 'given', ?, ?, ?, ?, 'system', 'consentflow', 'system', 'bench-baseline')",
                [(*e, e[5]) for e in events],
            )
            cur.executemany(
                "UPDATE subject SET last_seq = ? WHERE id = ?", [(q_, s) for s, q_ in subjects]
            )
            cur.executemany(
                "INSERT INTO audit_entry (seq, recorded_at, action, subject_ref, purpose_key,"
                " actor_type, actor, channel, run_id, detail, prev_hash, hash) VALUES"
                " (?, ?, 'consent.expire', ?, ?, 'system', 'consentflow', 'system',"
                " 'bench-baseline', ?, ?, ?)",
                audit_rows,
            )
            cur.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head_seq, prev))
            cur.execute("COMMIT")
        done += len(rows)
    raw.close()
    return done


def totals(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM consent WHERE state = 'expired'")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM consent_event")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM audit_entry")).scalar_one(),
        )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--consents", type=int, default=1_000_000)
    ap.add_argument("--due", type=int, default=250_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--profile", action="store_true", help="profile the sweep (slower)")
    ap.add_argument("--no-flow", action="store_true", help="skip (c), the Prefect flow run")
    args = ap.parse_args()
    if args.consents % 7919 == 0:
        ap.error("--consents must not be a multiple of 7919")

    tmp = Path(tempfile.mkdtemp(prefix="consentflow-bench-"))
    made: list[str] = []
    if args.url:
        parsed = make_url(db.normalise_url(args.url))
        base = parsed.set(database="consentflow_bench_src").render_as_string(hide_password=False)
        admin = create_engine(
            parsed.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            for name in ("consentflow_bench_src", *(f"consentflow_bench_{x}" for x in "abc")):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text('CREATE DATABASE "consentflow_bench_src"'))
        made.append("consentflow_bench_src")
    else:
        admin = None
        base = f"sqlite:///{tmp / 'src.db'}"
    try:
        as_of = utcnow()
        engine = db.make_engine(base)
        db.upgrade(engine)
        started = time.perf_counter()
        fill(engine, args.consents, args.due, as_of)
        print(
            f"{engine.dialect.name}: {args.consents:,} consents, {args.due:,} due, "
            f"batches of {args.batch_size:,} (filled in {time.perf_counter() - started:.1f} s)"
        )
        url_a = copy_database(base, engine, "consentflow_bench_a")
        url_b = copy_database(base, engine, "consentflow_bench_b")
        made += ["consentflow_bench_a", "consentflow_bench_b"]
        if not args.no_flow:
            url_c = copy_database(base, engine, "consentflow_bench_c")
            made.append("consentflow_bench_c")

        eng_b = db.make_engine(url_b)
        started = time.perf_counter()
        n_b = run_baseline(eng_b, as_of, args.batch_size)
        t_b = time.perf_counter() - started

        eng_a = db.make_engine(url_a)
        profiler = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        n_a = run_sweep(eng_a, as_of, args.batch_size)
        if profiler:
            profiler.disable()
        t_a = time.perf_counter() - started

        check_a, check_b = totals(eng_a), totals(eng_b)
        assert n_a == n_b == args.due, (n_a, n_b)
        assert check_a == check_b, (check_a, check_b)
        rate_a, rate_b = n_a / t_a, n_b / t_b
        print(f"(a) expiry sweep (sweeps.expire_batch): {n_a:,} in {t_a:.2f} s = {rate_a:,.0f}/s")
        print(f"(b) hand-written set-based SQL:         {n_b:,} in {t_b:.2f} s = {rate_b:,.0f}/s")
        print(f"ratio (a)/(b): {rate_a / rate_b:.2f}  (target >= 0.5)")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        eng_a.dispose()
        eng_b.dispose()

        if not args.no_flow:
            started = time.perf_counter()
            start_prefect()
            warm = time.perf_counter() - started
            started = time.perf_counter()
            n_c = run_flow(url_c, as_of, args.batch_size)
            t_c = time.perf_counter() - started
            eng_c = db.make_engine(url_c)
            expired, events, entries = totals(eng_c)
            eng_c.dispose()
            assert n_c == args.due, n_c
            assert (expired, events, entries - 1) == check_b, ((expired, events, entries), check_b)
            rate_c = n_c / t_c
            tasks = -(-args.due // args.batch_size) + 1  # the last, empty batch ends the loop
            print(
                f"(c) expiry-sweep flow run (Prefect, {tasks} tasks): {n_c:,} in {t_c:.2f} s "
                f"= {rate_c:,.0f}/s  (embedded server started beforehand, in {warm:.1f} s)"
            )
            print(f"ratio (c)/(b): {rate_c / rate_b:.2f}   (c)/(a): {rate_c / rate_a:.2f}")
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for name in made:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

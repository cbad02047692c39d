"""Benchmark: the expiry sweep against plain SQL writing the same rows, and against bare tables.

Not a test. It fills a database with N consents (default 200,000; the issue's figure is
1,000,000: ``--consents 1000000``): N/4 subjects x 4 purposes, one history event each, a quarter
of them past their validity (spread evenly over subjects and purposes), and one downstream system
with a webhook subscribed to every purpose, so each expiry also writes one outbox row. It then
copies the database and expires the due consents on each copy, batch by batch (``--batch-size``,
default 5,000, the flow's default), one transaction per batch, each timed from the first batch
to the last commit:

(a) the sweep, in process: ``consentflow.sweeps.expire_batch`` (what each task of the
    expiry-sweep flow runs), drained as the flow drains it, in a fresh child process that also
    reports its peak memory (RSS) and how far the sweep raised it above the process's set-up;
(b) the same-schema baseline: the fastest plain SQL, through the bare driver, that writes the
    same rows into consentflow's own tables and indexes: per batch, claim the due consents
    (PostgreSQL: ``FOR UPDATE ... SKIP LOCKED``), set state and last event, advance each
    subject's sequence number, one history row, one outbox row with its webhook body and one
    audit entry each (the chain hashed in Python: SQL cannot chain hashes), move the audit head.
    PostgreSQL: one statement per table per batch (``UPDATE ... FROM unnest`` /
    ``INSERT ... SELECT FROM unnest``); SQLite: prepared statements over the batch;
(c) the bare limit: the same number of rows (one state, history, audit and outbox row per
    expiry) with the same columns and values of the same size, written into bare tables with no
    keys or indexes, per batch of the same size, one transaction each (PostgreSQL ``COPY``,
    SQLite ``executemany``); the rows are made in Python beforehand, outside the timer;
(d) one real run of the ``expiry-sweep`` Prefect flow on a fourth copy, as ``consentflow run
    expiry-sweep`` runs it (an embedded Prefect server in a throw-away ``PREFECT_HOME``, started
    by a trivial flow run first, since a deployment's worker does not pay for that per run): its
    rate from the first batch's start to the last batch's commit (timed in this process: the
    Prefect API's task times lag behind when its server is busy), and from the call to its
    return; the task runs the API holds for the run (orchestration overhead: one per batch,
    ``bench/orchestration.py`` compares two sizes).

Afterwards the copies are checked: the same counts of expired consents, events, outbox rows and
audit entries, every chain verifies, and the baseline wrote rows equal to the sweep's in every
column but ids, times and hashes. It prints each rate and the ratios (a)/(b) (target >= 0.5) and
(b)/(c) (the baseline must reach >= 0.3 of the bare limit).

    python bench/expiry_sweep.py                                   # SQLite file in a temp dir
    python bench/expiry_sweep.py --consents 1000000                # the issue's size
    python bench/expiry_sweep.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/expiry_sweep.py --memory-at 100000                # also: peak memory at 100k
    python bench/expiry_sweep.py --profile                         # where the sweep spends time
    python bench/expiry_sweep.py --no-flow                         # (a), (b) and (c) only
"""

from __future__ import annotations

import argparse
import atexit
import functools
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _expiry_sql import (
    CpuClock,
    backend_pid,
    check_same_rows,
    run_bare,
    run_baseline,
    totals,
)

from consentflow import db, purposes, systems
from consentflow.models import utcnow

PURPOSES = ["news", "offers", "profiling", "partners"]
SPAWN = multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def fill(engine: Engine, n: int, due: int, as_of: datetime) -> None:
    """N consents, ``due`` of them ended before ``as_of``, generated inside the database."""
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES, webhook_url="https://crm.example.com/hooks")
    pg = engine.dialect.name == "postgresql"
    n_subjects = (n + len(PURPOSES) - 1) // len(PURPOSES)
    # Consent i (1-based) belongs to subject (i-1)/4+1 and purpose (i-1)%4+1; it is due when
    # (i * 7919) % n < due, which picks exactly `due` consents spread evenly over the table.
    p: dict[str, Any] = {"n": n, "due": due, "subjects": n_subjects, "as_of": as_of}
    if pg:
        statements = [
            """INSERT INTO subject (id, external_id, subject_ref, email, locale, last_seq,
                                    created_at)
               SELECT i, 's' || i, md5('ref' || i), NULL, 'en', 0, :as_of
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
               SELECT i, 's' || i, lower(hex(randomblob(16))), NULL, 'en', 0,
                      :as_of || '.000000' FROM g""",
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
    if not pg:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()


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
# (a) the sweep, in a child process of its own
# --------------------------------------------------------------------------------------------


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory (``VmHWM``), or its current one (``VmRSS``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _sweep_child(url: str, as_of: datetime, batch: int, profile: bool, out: Any) -> None:
    import cProfile
    import io
    import pstats

    from consentflow import db, sweeps

    engine = db.make_engine(url)
    ctx = sweeps.SweepContext(as_of, run_id="bench-sweep", engine=engine)

    def backend() -> int | None:  # the pool's one connection, reused by every batch
        with db.session_scope(engine, readonly=True) as s:
            return backend_pid(s.connection().connection.cursor(), engine.dialect.name != "sqlite")

    pid = backend()
    set_up = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here (Linux)
    profiler = cProfile.Profile() if profile else None
    done, batches = 0, 0
    started, cpu = time.perf_counter(), CpuClock(pid)
    if profiler:
        profiler.enable()
    for result in sweeps.drain(
        lambda size, cursor: sweeps.expire_batch(ctx, size, cursor), batch_size=batch
    ):
        done += result.seen
        batches += 1
    if profiler:
        profiler.disable()
    seconds, cpu_seconds = time.perf_counter() - started, cpu.seconds()
    assert backend() == pid, "the sweep used another connection: its CPU time is not counted"
    report = ""
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(22)
        report = buf.getvalue()
    engine.dispose()
    out.put((done, batches, seconds, cpu_seconds, set_up, _rss_mb(), report))


@dataclass
class SweepResult:
    done: int
    batches: int
    seconds: float
    cpu_seconds: float | None
    rss_set_up: float
    rss_peak: float
    profile: str


def run_sweep(url: str, as_of: datetime, batch: int, profile: bool = False) -> SweepResult:
    """(a) in a fresh process, so that its peak memory is the sweep's own."""
    out = SPAWN.Queue()
    child = SPAWN.Process(target=_sweep_child, args=(url, as_of, batch, profile, out))
    child.start()
    result = SweepResult(*out.get())
    child.join()
    assert child.exitcode == 0, child.exitcode
    return result


# --------------------------------------------------------------------------------------------
# (d) the flow
# --------------------------------------------------------------------------------------------


def start_prefect() -> None:
    """An embedded Prefect as ``consentflow run`` gets it without a server (a throw-away
    ``PREFECT_HOME``, no telemetry), set before Prefect is imported; then one trivial flow run,
    so the embedded server is up before anything is timed."""
    if not os.environ.get("PREFECT_HOME"):
        home = tempfile.mkdtemp(prefix="consentflow-bench-prefect-")
        atexit.register(shutil.rmtree, home, True)
        os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()


@dataclass
class FlowResult:
    expired: int
    seconds: float  # the call, start to return
    batch_seconds: float  # first batch's start to the last one's commit, in this process
    task_runs: dict[str, int]  # by task name, from the Prefect API
    flow_run_id: str


def task_runs_of(flow_run_id: str, expected: int | None = None) -> list[Any]:
    """The task runs the Prefect API holds for a flow run, once all ``expected`` ended (the
    server records them from events, a moment after the client finished them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            runs: list[Any] = []
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    limit=200,
                    offset=len(runs),
                )
                runs += page
                if len(page) < 200:
                    break
            ended = [r for r in runs if r.end_time is not None]
            if expected is None or len(ended) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def run_flow(url: str, as_of: datetime, batch: int, expected_batches: int) -> FlowResult:
    """(d): one run of the expiry-sweep flow on the database at ``url``."""
    from consentflow import settings, sweeps
    from flows import expiry_sweep

    os.environ["CONSENTFLOW_DATABASE_URL"] = url  # the flow's tasks use the default engine
    settings.get_settings.cache_clear()
    # Each batch task's start and end as this process sees them (the API's task times lag
    # behind when the embedded server is busy): the flow looks the sweep up at call time.
    marks: list[float] = []
    real = sweeps.expire_batch

    @functools.wraps(real)
    def expire_batch(*args: Any, **kwargs: Any) -> Any:
        marks.append(time.perf_counter())
        try:
            return real(*args, **kwargs)
        finally:
            marks.append(time.perf_counter())

    sweeps.expire_batch = expire_batch  # type: ignore[assignment]
    started = time.perf_counter()
    try:
        summary = expiry_sweep.expiry_sweep(as_of=as_of, batch_size=batch)
    finally:
        sweeps.expire_batch = real  # type: ignore[assignment]
    seconds = time.perf_counter() - started
    assert summary.outcome == "completed", summary.outcome
    assert summary.run_id is not None
    runs = task_runs_of(summary.run_id, expected_batches)
    names: dict[str, int] = {}
    for r in runs:
        names[r.name.rsplit("-", 1)[0]] = names.get(r.name.rsplit("-", 1)[0], 0) + 1
    return FlowResult(
        summary.total("expired"), seconds, max(marks) - min(marks), names, summary.run_id
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


class Databases:
    """The source database and its copies, dropped (PostgreSQL) or deleted at the end."""

    def __init__(self, url: str | None, prefix: str = "consentflow_bench") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="consentflow-bench-"))
        self.prefix = prefix
        self.made: list[str] = []
        self.admin: Engine | None = None
        if url:
            parsed = make_url(db.normalise_url(url))
            self.admin = create_engine(
                parsed.set(database="postgres").render_as_string(hide_password=False),
                isolation_level="AUTOCOMMIT",
            )
            name = f"{prefix}_src"
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            self.made.append(name)
            self.base = parsed.set(database=name).render_as_string(hide_password=False)
        else:
            self.base = f"sqlite:///{self.tmp / 'src.db'}"

    def filled(self, n: int, due: int, as_of: datetime) -> Engine:
        engine = db.make_engine(self.base)
        db.upgrade(engine)
        fill(engine, n, due, as_of)
        return engine

    def copy(self, engine: Engine, what: str) -> str:
        name = f"{self.prefix}_{what}"
        self.made.append(name)
        return copy_database(self.base, engine, name)

    def drop(self, url: str) -> None:
        """Free a copy's space as soon as it is checked (1,000,000 consents take ~0.5 GB)."""
        if self.admin is None:
            Path(make_url(url).database or "").unlink(missing_ok=True)
            return
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self.admin is not None:
            with self.admin.connect() as conn:
                for name in self.made:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            self.admin.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _rate(n: int, seconds: float, cpu: float | None = None) -> str:
    text = f"{n:,} in {seconds:.2f} s = {n / seconds:,.0f}/s"
    if cpu is not None:
        text += f" (CPU {cpu:.2f} s: {n / cpu:,.0f} per CPU second)"
    return text


def _ratio(base: tuple[float, float | None], other: tuple[float, float | None]) -> str:
    """Rate of ``other`` over rate of ``base`` for the same work: elapsed, and per CPU second."""
    text = f"{base[0] / other[0]:.2f}"
    if base[1] is not None and other[1] is not None:
        text += f" (per CPU second {base[1] / other[1]:.2f})"
    return text


def memory_only(url: str | None, n: int, batch: int) -> SweepResult:
    """The sweep alone on ``n`` consents (for ``--memory-at``)."""
    dbs = Databases(url, prefix="consentflow_bench_mem")
    try:
        as_of = utcnow()
        engine = dbs.filled(n, n // 4, as_of)
        url_a = dbs.copy(engine, "a")
        return run_sweep(url_a, as_of, batch)
    finally:
        dbs.close()


def main() -> None:  # Long: one phase after another, each printed as it ends
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--consents", type=int, default=200_000)
    ap.add_argument("--due", type=int, help="due consents (default: a quarter)")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--profile", action="store_true", help="profile the sweep (slower)")
    ap.add_argument("--no-flow", action="store_true", help="skip (d), the Prefect flow run")
    ap.add_argument("--memory-at", type=int, help="also sweep this many consents: memory ratio")
    args = ap.parse_args()
    due = args.due if args.due is not None else args.consents // 4
    if args.consents % 7919 == 0:
        ap.error("--consents must not be a multiple of 7919")

    dbs = Databases(args.url)
    try:
        as_of = utcnow()
        started = time.perf_counter()
        engine = dbs.filled(args.consents, due, as_of)
        print(
            f"{engine.dialect.name}: {args.consents:,} consents, {due:,} due, one webhook "
            f"subscriber, batches of {args.batch_size:,} (filled in "
            f"{time.perf_counter() - started:.1f} s; load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})",
            flush=True,
        )
        url_a, url_b, url_c = (dbs.copy(engine, x) for x in "abc")
        url_d = None if args.no_flow else dbs.copy(engine, "d")

        t_c, cpu_c = run_bare(url_c, due, args.batch_size, as_of)
        dbs.drop(url_c)
        print(f"(c) bare limit, no keys or indexes:   {_rate(due, t_c, cpu_c)}", flush=True)
        eng_b = db.make_engine(url_b)
        n_b, t_b, cpu_b = run_baseline(eng_b, as_of, args.batch_size)
        print(f"(b) same-schema baseline (plain SQL): {_rate(n_b, t_b, cpu_b)}", flush=True)
        a = run_sweep(url_a, as_of, args.batch_size, args.profile)
        print(
            f"(a) expiry sweep (sweeps.expire_batch, in process): "
            f"{_rate(a.done, a.seconds, a.cpu_seconds)}; {a.batches} batches; peak RSS "
            f"{a.rss_peak:.0f} MB (+{a.rss_peak - a.rss_set_up:.0f} MB over its set-up)",
            flush=True,
        )
        eng_a = db.make_engine(url_a)
        check_a, check_b = totals(eng_a), totals(eng_b)
        assert a.done == n_b == due, (a.done, n_b)
        assert check_a == check_b, (check_a, check_b)
        check_same_rows(eng_a, eng_b)
        eng_a.dispose()
        eng_b.dispose()
        dbs.drop(url_a)
        dbs.drop(url_b)
        print("checked: same rows in (a) and (b), both audit chains verify")
        for name, x, y, target in (
            ("(a)/(b)", (t_b, cpu_b), (a.seconds, a.cpu_seconds), "target >= 0.5"),
            ("(b)/(c)", (t_c, cpu_c), (t_b, cpu_b), "the baseline must reach >= 0.3"),
            ("(a)/(c)", (t_c, cpu_c), (a.seconds, a.cpu_seconds), "hence >= 0.15"),
        ):
            print(f"ratio {name}: {_ratio(x, y)}  ({target})")
        if a.profile:
            print(a.profile)

        if url_d is not None:
            started = time.perf_counter()
            start_prefect()
            warm = time.perf_counter() - started
            expected = -(-due // args.batch_size) + 1  # the last, empty batch ends the loop
            d = run_flow(url_d, as_of, args.batch_size, expected)
            eng_d = db.make_engine(url_d)
            expired, events, deliveries, entries = totals(eng_d)
            eng_d.dispose()
            assert d.expired == due, d.expired
            assert (expired, events, deliveries, entries - 1) == check_b, (
                (expired, events, deliveries, entries),
                check_b,
            )
            print(
                f"(d) expiry-sweep flow run (Prefect; embedded server started beforehand in "
                f"{warm:.1f} s): first batch to last commit {_rate(d.expired, d.batch_seconds)}; "
                f"call to return {_rate(d.expired, d.seconds)}"
            )
            print(f"    task runs recorded by the Prefect API: {d.task_runs} (batches: {expected})")
            print(
                f"ratio (d)/(b): {d.expired / d.batch_seconds / (n_b / t_b):.2f} (batches), "
                f"{d.expired / d.seconds / (n_b / t_b):.2f} (call)"
            )
        if args.memory_at:
            m = memory_only(args.url, args.memory_at, args.batch_size)
            print(
                f"memory: peak RSS {m.rss_peak:.0f} MB at {args.memory_at:,} consents "
                f"(+{m.rss_peak - m.rss_set_up:.0f} MB), {a.rss_peak:.0f} MB at "
                f"{args.consents:,} (+{a.rss_peak - a.rss_set_up:.0f} MB): ratio "
                f"{a.rss_peak / m.rss_peak:.2f} (target <= 1.3)"
            )
    finally:
        dbs.close()


if __name__ == "__main__":
    main()

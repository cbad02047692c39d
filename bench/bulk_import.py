"""Benchmark: ``consentflow subject import`` against plain SQL writing the same rows.

Not a test. It writes a CSV of N rows (default 100,000), each one new subject with one given
consent (email, locale, one of four purposes in turn, a grant date in the last 300 days, no
validity end: the notice's 365 days apply), and times three things, each on a fresh copy of one
migrated database holding the four purposes:

(a) consentflow: ``importer.import_file(engine, path)``, the function ``consentflow subject
    import FILE`` calls (defaults: batch 5,000, no ``--skip-bad``), in process, in a child
    process of its own so that its peak memory is its own: parse, the validating first pass,
    the import, the run's audit entry. Timed from the call to its return.
(b) the same-schema baseline: hand-written code reading the same CSV (``csv.reader``, no
    validation) and writing the same rows into consentflow's own tables and indexes through the
    bare driver, one transaction per 5,000 rows: per row one subject (its reference the same
    keyed hash, its ``last_seq`` already 1), one consent, one history event, two hash-chained
    audit entries (``subject.created``, ``consent.import``; hashed in Python), the audit head
    moved once per batch. SQLite: ``executemany``; PostgreSQL: ``COPY`` (ids drawn from the
    sequence in one statement per batch).
(c) the bare limit: the same number of rows (N subjects, N consents, N events, 2N audit
    entries), already built, written the same way into bare copies of those tables (same
    columns, no key, no index, no constraint).

It prints the rates, the ratios (a)/(b) (target >= 0.5) and (b)/(c) (the baseline must reach
>= 0.3), each also per CPU-second (this process and, on PostgreSQL, the server backends doing
the work: steadier than wall time on a machine shared with other jobs); checks that (a) and (b)
stored the same values (``FINGERPRINT``: every row of the four tables but ids, event and run
ids and the instants of writing) and that (a)'s audit chain verifies; and (a)'s memory: the
child's peak RSS and its growth over the RSS it had before the import. Give several sizes to see
whether memory stays flat (the target: peak at the largest <= 1.3x the smallest). First it
checks that validation is still all-or-nothing: a file of 100,000 good rows and one bad last row
is refused whole, nothing written (``--all-or-nothing-rows``). Its databases (PostgreSQL) are
its own, named ``bench_import_<pid>_*``, created and dropped on the server of ``--url``; the
database named in the URL is never touched. The row-by-row comparison and the chain's
verification cost about a phase each at 1,000,000 rows: ``--check-at`` limits them to one size,
``--no-check`` skips them (the same code writes every size).

    python bench/bulk_import.py                                  # 100,000 rows, SQLite
    python bench/bulk_import.py --rows 100000 1000000 --check-at 100000   # the record
    python bench/bulk_import.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/bulk_import.py --rows 20000 --profile /tmp/imp.prof  # cProfile of (a)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import hmac
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# One fixed key for the parent and its child, so both compute the same subject references.
SECRET = "bench-bulk-import-secret-key-0123456789"
os.environ["CONSENTFLOW_SECRET_KEY"] = SECRET

import orjson  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from consentflow import audit, db, purposes  # noqa: E402

PURPOSES = ["news", "offers", "profiling", "partners"]
VALIDITY = timedelta(days=365)
BATCH = 5000
#: The names of this run's databases (PostgreSQL) or files: its own, so that two runs, or the
#: test suite's database on the same server, are never touched.
PREFIX = f"bench_import_{os.getpid()}"
HEADER = ["external_id", "email", "locale", "purpose", "state", "given_at", "valid_until"]
TABLES = ("subject", "consent", "consent_event", "audit_entry")

SUBJECT_COLS = (
    "id, external_id, subject_ref, generation, email, locale, last_seq, created_at, erased_at"
)
CONSENT_COLS = (
    "subject_id, purpose_id, state, purpose_version, given_at, valid_until, updated_at,"
    " last_event_id, reminder_stage"
)
EVENT_COLS = (
    "id, subject_id, purpose_id, seq, action, state, previous_state, purpose_version,"
    " occurred_at, recorded_at, valid_until, actor_type, actor, channel, reason, evidence, run_id"
)
AUDIT_COLS = (
    "seq, recorded_at, action, subject_ref, purpose_key, actor_type, actor, channel, run_id,"
    " detail, prev_hash, hash"
)
COLUMNS = {
    "subject": SUBJECT_COLS,
    "consent": CONSENT_COLS,
    "consent_event": EVENT_COLS,
    "audit_entry": AUDIT_COLS,
}


# --------------------------------------------------------------------------------------------
# Data and databases
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, n: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=300)
    locales = ["en", "fr", "de-AT", "pt-BR"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(HEADER)
        for i in range(n):
            given = start + timedelta(seconds=(i * 7919) % (299 * 86400))
            out.writerow(
                [
                    f"user{i:08d}",
                    f"user{i:08d}@example.com",
                    locales[i % 4],
                    PURPOSES[i % 4],
                    "given",
                    given.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "",
                ]
            )


def template(url: str | None, workdir: Path) -> str:
    """A migrated database with the purposes; its URL (PostgreSQL: a database to copy)."""
    if url is None:
        target = f"sqlite:///{workdir / 'template.db'}"
    else:
        target = _pg_create(url, f"{PREFIX}_template")
    engine = db.make_engine(target)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
    engine.dispose()
    return target


def _pg_admin(url: str) -> Engine:
    admin = make_url(db.normalise_url(url)).set(database="postgres")
    return create_engine(admin.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")


def _pg_create(url: str, name: str, source: str | None = None) -> str:
    admin = _pg_admin(url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(
            text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{source}"' if source else ""))
        )
    admin.dispose()
    parsed = make_url(db.normalise_url(url)).set(database=name)
    return parsed.render_as_string(hide_password=False)


def fresh_copy(template_url: str, name: str) -> str:
    parsed = make_url(template_url)
    if parsed.get_backend_name() == "sqlite":
        src = Path(parsed.database or "")
        dst = src.with_name(f"{name}.db")
        for suffix in ("", "-wal", "-shm"):
            Path(str(dst) + suffix).unlink(missing_ok=True)
        shutil.copy(src, dst)
        return f"sqlite:///{dst}"
    return _pg_create(template_url, name, source=parsed.database)


def drop(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(str(parsed.database) + suffix).unlink(missing_ok=True)
        return
    admin = _pg_admin(url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


#: What must be equal between (a) and (b): every stored value but ids, event ids, run ids and
#: the instants of writing.
FINGERPRINT = {
    "subject": "SELECT external_id, subject_ref, generation, email, locale, last_seq, erased_at"
    " FROM subject ORDER BY external_id",
    "consent": "SELECT s.external_id, p.key, c.state, c.purpose_version, c.given_at,"
    " c.valid_until, c.reminder_stage FROM consent c JOIN subject s ON s.id = c.subject_id"
    " JOIN purpose p ON p.id = c.purpose_id ORDER BY s.external_id, p.key",
    "consent_event": "SELECT s.external_id, p.key, e.seq, e.action, e.state, e.previous_state,"
    " e.purpose_version, e.occurred_at, e.valid_until, e.actor_type, e.actor, e.channel,"
    " e.reason, e.evidence FROM consent_event e JOIN subject s ON s.id = e.subject_id"
    " JOIN purpose p ON p.id = e.purpose_id ORDER BY s.external_id, e.seq",
    "audit_entry": "SELECT seq, action, subject_ref, purpose_key, actor_type, actor, channel,"
    " detail FROM audit_entry WHERE action <> 'import.run' ORDER BY seq",
}


def fingerprint(url: str) -> dict[str, tuple[int, str]]:
    """Per table: how many rows, and a hash of their values (see ``FINGERPRINT``), read in
    order a chunk at a time. Audit details are compared without their event ids."""
    engine = db.make_engine(url)
    found = {}
    with engine.connect() as conn:
        for table, sql in FINGERPRINT.items():
            digest, n = hashlib.sha256(), 0
            result = conn.execution_options(yield_per=10_000).execute(text(sql))
            for row in result:
                values = list(row)
                if table == "audit_entry":
                    detail = values[-1] if isinstance(values[-1], dict) else json.loads(values[-1])
                    detail.pop("event_id", None)
                    values[-1] = detail
                digest.update(orjson.dumps(values, default=str, option=orjson.OPT_SORT_KEYS))
                n += 1
            found[table] = (n, digest.hexdigest())
    engine.dispose()
    return found


# --------------------------------------------------------------------------------------------
# (a) consentflow, in a child process
# --------------------------------------------------------------------------------------------


def cpu_seconds(engine: Engine) -> float:
    """CPU time so far of this process and of the PostgreSQL backends serving ``engine``'s
    database (same host): under a shared machine's load, work done is steadier than wall time.
    Only backends still connected count, so read it before closing them."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if engine.dialect.name != "postgresql":
        return total
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        tick = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def child_import(url: str, path: Path, profile: str | None) -> None:
    """Runs in the child: import ``path`` as the CLI does; prints seconds and memory as JSON."""
    from consentflow import importer

    engine = db.make_engine(url)
    with engine.connect():
        pass
    before = _rss_kib()
    cpu = cpu_seconds(engine)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    report = importer.import_file(engine, path)
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    cpu = cpu_seconds(engine) - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.dispose()
    assert not report.errors, report.errors[:3]
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "cpu": cpu,
                "rss_before_kib": before,
                "peak_kib": peak,
                "rows": report.rows,
                "consents": report.consents_created,
            }
        )
    )


def run_import(url: str, path: Path, profile: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-import", url, str(path)]
    if profile:
        cmd += ["--profile", profile]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the import failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------------
# (b) the same-schema baseline, (c) the bare limit
# --------------------------------------------------------------------------------------------


class Rows:
    """The rows the import writes for a batch of CSV records, built as plainly as possible."""

    def __init__(self, pg: bool, purpose_ids: dict[str, int], actor: str, run_id: str) -> None:
        self.pg, self.purpose_ids, self.actor, self.run_id = pg, purpose_ids, actor, run_id
        self.ref_key = hmac.new(SECRET.encode(), b"subject:", hashlib.sha256)

    def ts(self, value: datetime) -> Any:
        return value if self.pg else value.isoformat(" ", "microseconds")[:-6]

    def build(
        self, records: list[list[str]], ids: list[int], head: tuple[int, str], now: datetime
    ) -> tuple[list[tuple[Any, ...]], ...]:
        pg, actor, run_id = self.pg, self.actor, self.run_id
        now_db, now_iso = self.ts(now), now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        subjects, consents, events, created, imported = [], [], [], [], []
        for sid, (ext, email, locale, purpose, state, given_s, _until) in zip(
            ids, records, strict=True
        ):
            h = self.ref_key.copy()
            h.update(ext.encode())
            ref = h.hexdigest()[:32]
            given = datetime.fromisoformat(given_s)
            until = given + VALIDITY
            eid = uuid.uuid4()
            eid_db = eid if pg else eid.hex
            pid = self.purpose_ids[purpose]
            given_db, until_db = self.ts(given), self.ts(until)
            subjects.append((sid, ext, ref, 1, email, locale, 1, now_db, None))
            consents.append((sid, pid, state, 1, given_db, until_db, now_db, eid_db, None))
            events.append(
                (eid_db, sid, pid, 1, "import", state, None, 1, given_db, now_db, until_db,
                 "import", actor, "import", None, None, run_id)
            )  # fmt: skip
            created.append((ref, None, {"has_email": True, "locale": locale}))
            imported.append(
                (ref, purpose, {"event_id": eid, "seq": 1, "from": None, "to": state,
                                "purpose_version": 1, "occurred_at": given, "valid_until": until,
                                "reason": None, "deliveries": 0, "v": 2, "evidence": None})
            )  # fmt: skip
        seq, prev = head
        entries = []
        for action, batch in (("subject.created", created), ("consent.import", imported)):
            for ref, purpose_key, detail in batch:
                seq += 1
                body = orjson.dumps(detail, option=orjson.OPT_SORT_KEYS)
                header = [seq, now_iso, action, ref, purpose_key, "import", actor, "import", run_id]
                digest = hashlib.sha256(
                    b"%s\n%s\n%s" % (prev.encode(), orjson.dumps(header), body)
                ).hexdigest()
                entries.append((seq, now_db, *header[2:], body.decode(), prev, digest))
                prev = digest
        return subjects, consents, events, entries


def _write(cur: Any, pg: bool, table: str, rows: list[tuple[Any, ...]]) -> None:
    cols = COLUMNS[table.removeprefix("bare_")]
    if pg:
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ",".join("?" * (cols.count(",") + 1))
        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def _chunks(path: Path) -> Iterator[list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[list[str]] = []
        for record in reader:
            batch.append(record)
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def run_baseline(url: str, path: Path) -> tuple[float, float]:
    engine = db.make_engine(url)
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("SELECT key, id FROM purpose")
    rows = Rows(pg, dict(cur.fetchall()), f"import:{path.name}", uuid.uuid4().hex)
    if not pg:
        raw.commit()
    cpu = cpu_seconds(engine)
    started = time.perf_counter()
    for records in _chunks(path):
        if pg:
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence('subject', 'id'))"
                " FROM generate_series(1, %s)",
                (len(records),),
            )
            ids = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        else:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("SELECT coalesce(max(id), 0) + 1 FROM subject")
            start = cur.fetchone()[0]
            ids = list(range(start, start + len(records)))
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
        head = cur.fetchone()
        built = rows.build(records, ids, head, datetime.now(UTC))
        for table, batch in zip(TABLES, built, strict=True):
            _write(cur, pg, table, batch)
        last = built[3][-1]
        mark = "%s" if pg else "?"
        cur.execute(f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = 1", last[::11])
        if pg:
            raw.commit()
        else:
            cur.execute("COMMIT")
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(engine) - cpu
    raw.close()
    engine.dispose()
    return elapsed, cpu


def run_bare(url: str, path: Path, n: int) -> tuple[float, float]:
    """(c): N, N, N and 2N rows of the baseline's first batch's shape into bare tables."""
    engine = db.make_engine(url)
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    cur = raw.cursor()
    for table in TABLES:  # the same columns and types; no key, index or constraint
        cur.execute(f"CREATE TABLE bare_{table} AS SELECT * FROM {table} WHERE 1 = 0")
    raw.commit()
    cur.execute("SELECT key, id FROM purpose")
    rows = Rows(pg, dict(cur.fetchall()), f"import:{path.name}", uuid.uuid4().hex)
    first = next(_chunks(path))
    sample = rows.build(
        first, list(range(1, len(first) + 1)), (0, audit.GENESIS), datetime.now(UTC)
    )
    cpu = cpu_seconds(engine)
    started = time.perf_counter()
    written = 0
    while written < n:
        take = min(BATCH, n - written)
        if not pg:
            cur.execute("BEGIN IMMEDIATE")
        for table, batch in zip(TABLES, sample, strict=True):
            if table == "audit_entry":
                _write(cur, pg, f"bare_{table}", batch[: 2 * take])
            else:
                _write(cur, pg, f"bare_{table}", batch[:take])
        if pg:
            raw.commit()
        else:
            cur.execute("COMMIT")
        written += take
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(engine) - cpu
    raw.close()
    engine.dispose()
    return elapsed, cpu


# --------------------------------------------------------------------------------------------


def measure(
    base: str, workdir: Path, n: int, profile: str | None, check: bool = True
) -> dict[str, Any]:
    path = workdir / f"import-{n}.csv"
    write_csv(path, n)
    a_url = fresh_copy(base, f"{PREFIX}_a")
    imp = run_import(a_url, path, profile)
    b_url = fresh_copy(base, f"{PREFIX}_b")
    baseline, baseline_cpu = run_baseline(b_url, path)
    same: bool | None = None
    chain_ok: bool | None = None
    counts: dict[str, int] = {}
    if check:
        got_a, got_b = fingerprint(a_url), fingerprint(b_url)
        same = got_a == got_b
        counts = {t: n for t, (n, _) in got_a.items()}
        engine = db.make_engine(a_url)
        with db.session_scope(engine, readonly=True) as s:
            chain_ok = audit.verify(s).ok
        engine.dispose()
    drop(a_url)
    drop(b_url)
    c_url = fresh_copy(base, f"{PREFIX}_c")
    bare, bare_cpu = run_bare(c_url, path, n)
    drop(c_url)
    path.unlink()
    return {
        "rows": n,
        "import": n / imp["seconds"],
        "baseline": n / baseline,
        "bare": n / bare,
        # rows per CPU-second (this process and the database server's backends)
        "import_cpu": n / imp["cpu"],
        "baseline_cpu": n / baseline_cpu,
        "bare_cpu": n / bare_cpu,
        "seconds": {"import": imp["seconds"], "baseline": baseline, "bare": bare},
        "peak_mib": imp["peak_kib"] / 1024,
        "growth_mib": (imp["peak_kib"] - imp["rss_before_kib"]) / 1024,
        "same_rows": same,
        "chain_ok": chain_ok,
        "counts": counts,
    }


def measure_phase(base: str, workdir: Path, n: int, phase: str) -> str:
    """One phase alone (``--phase``): for a machine too loaded to run the three one after the
    other in time; run the three at once, each in its own process, and compare their rates per
    CPU second (what the load does not change)."""
    path = workdir / f"import-{n}.csv"
    write_csv(path, n if phase != "c" else min(n, BATCH))  # (c) repeats the first batch's rows
    url = fresh_copy(base, f"{PREFIX}_{phase}")
    extra = ""
    if phase == "a":
        imp = run_import(url, path, None)
        seconds, cpu = imp["seconds"], imp["cpu"]
        extra = (
            f"   peak RSS {imp['peak_kib'] / 1024:.0f} MiB,"
            f" growth {(imp['peak_kib'] - imp['rss_before_kib']) / 1024:.0f} MiB"
        )
    elif phase == "b":
        seconds, cpu = run_baseline(url, path)
    else:
        seconds, cpu = run_bare(url, path, n)
    drop(url)
    path.unlink()
    name = {"a": "(a) import", "b": "(b) same-schema", "c": "(c) bare"}[phase]
    return (
        f"{n:>9,} rows, {name}: {seconds:.0f} s, {n / seconds:,.0f} rows/s,"
        f" {cpu:.0f} CPU-s, {n / cpu:,.0f} rows/CPU-s{extra}   (load {_load()})"
    )


def all_or_nothing(base: str, workdir: Path, n: int) -> str:
    """A file of ``n`` rows whose last row is bad (an unknown state), imported as the CLI does
    without ``--skip-bad``: it must be refused whole, nothing written (not even an audit entry)."""
    from consentflow import importer

    path = workdir / f"bad-{n}.csv"
    write_csv(path, n)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("userlast,last@example.com,en,news,maybe,2026-01-01T00:00:00Z,\n")
    url = fresh_copy(base, f"{PREFIX}_bad")
    engine = db.make_engine(url)

    def counts() -> dict[str, int]:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}

    before = counts()
    report = importer.import_file(engine, path)
    written = {t: n - before[t] for t, n in counts().items()}
    engine.dispose()
    drop(url)
    path.unlink()
    refused = [e.line for e in report.errors] == [n + 2] and not any(written.values())
    return (
        f"all-or-nothing: {n + 1:,} rows, the last bad: "
        + ("refused whole, nothing written" if refused else f"NOT refused whole: {written}")
        + f" (errors: {[(e.line, e.message) for e in report.errors][:3]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--url", help="PostgreSQL server URL (default: a SQLite file)")
    parser.add_argument("--profile", help="write a cProfile of (a) to this file")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip comparing (a) with (b) row by row and verifying (a)'s audit chain (each costs"
        " about as much as a phase at 1,000,000 rows)",
    )
    parser.add_argument(
        "--check-at",
        type=int,
        default=None,
        help="compare and verify only at this size (e.g. the smallest of --rows)",
    )
    parser.add_argument(
        "--all-or-nothing-rows",
        type=int,
        default=100_000,
        help="first, import a file of this many good rows and one bad last row: it must be"
        " refused whole (0: skip)",
    )
    parser.add_argument(
        "--phase",
        choices=["a", "b", "c"],
        help="run one phase alone (to run the three at once in three processes on a loaded"
        " machine; compare per CPU second); no comparison, no ratios",
    )
    parser.add_argument("--child-import", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_import:
        child_import(args.child_import[0], Path(args.child_import[1]), args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        workdir = Path(tmp)
        base = template(args.url, workdir)
        if args.all_or_nothing_rows:
            print(all_or_nothing(base, workdir, args.all_or_nothing_rows), flush=True)
        results = []
        for n in args.rows if not args.phase else []:
            check = not args.no_check and (args.check_at is None or args.check_at == n)
            r = measure(base, workdir, n, args.profile, check)
            results.append(r)
            for unit, key in (("rows/s", ""), ("rows/CPU-s", "_cpu")):
                a, b, c = r["import" + key], r["baseline" + key], r["bare" + key]
                print(
                    f"{n:>9,} rows, {unit:<10} (a) import {a:>9,.0f}   (b) same-schema {b:>9,.0f}"
                    f"   (c) bare {c:>9,.0f}   (a)/(b) {a / b:.2f} (target >= 0.5)"
                    f"   (b)/(c) {b / c:.2f} (>= 0.3)   (a)/(c) {a / c:.2f}"
                )
            took = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
            checked = (
                f"same rows as (b): {r['same_rows']}   audit chain intact: {r['chain_ok']}"
                if r["same_rows"] is not None
                else "(not compared with (b) at this size)"
            )
            print(
                f"{'':>15}memory of (a): peak RSS {r['peak_mib']:.0f} MiB, "
                f"growth {r['growth_mib']:.0f} MiB   {checked}   ({took}; load {_load()})",
                flush=True,
            )
        if args.phase:
            for n in args.rows:
                print(measure_phase(base, workdir, n, args.phase), flush=True)
        if len(results) > 1:
            lo, hi = results[0], results[-1]
            print(
                f"memory {hi['rows']:,} vs {lo['rows']:,} rows: peak RSS "
                f"{hi['peak_mib'] / lo['peak_mib']:.2f}x (target <= 1.3), growth "
                f"{hi['growth_mib']:.0f} vs {lo['growth_mib']:.0f} MiB"
            )
        if args.url:
            drop(base)


if __name__ == "__main__":
    main()

"""The expiry benchmark's two yardsticks in plain SQL (see ``expiry_sweep.py``'s docstring):
the same-schema baseline (``run_baseline``) and the bare limit (``run_bare``), and the checks
that the baseline wrote what the sweep wrote (``totals``, ``check_same_rows``)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.engine import Engine

from consentflow import audit, db
from consentflow.ledger._write import new_event_id

RUN_ID = "bench-sweep"  # (a) and (b) write the same run id, so their rows compare equal


_TICK = os.sysconf("SC_CLK_TCK")


def backend_pid(cur: Any, pg: bool) -> int | None:
    """The PostgreSQL server process serving this cursor's connection (None on SQLite)."""
    if not pg:
        return None
    cur.execute("SELECT pg_backend_pid()")
    pid: int = cur.fetchone()[0]
    return pid


class CpuClock:
    """CPU seconds (user + system) of this process and of a PostgreSQL backend on this host
    (``/proc``), since the clock was made: a rate per CPU second does not depend on how busy
    the shared machine was. ``None`` when the backend is not on this host."""

    def __init__(self, backend: int | None = None) -> None:
        self.backend = backend
        self.start = self._now()

    def _now(self) -> float | None:
        own = time.process_time()
        if self.backend is None:
            return own
        try:
            fields = Path(f"/proc/{self.backend}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return own + (int(fields[11]) + int(fields[12])) / _TICK

    def seconds(self) -> float | None:
        now = self._now()
        return None if now is None or self.start is None else now - self.start


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# (b) the same-schema baseline
# --------------------------------------------------------------------------------------------

_CLAIM = (
    "SELECT c.id, c.subject_id, c.purpose_id, c.purpose_version, c.valid_until, s.last_seq,"
    " s.subject_ref, s.external_id FROM consent c JOIN subject s ON s.id = c.subject_id"
    " WHERE c.state = 'given' AND c.valid_until <= {mark}"
    " ORDER BY c.valid_until, c.id LIMIT {limit}{lock}"
)

_EVENT_INSERT = (
    "INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state, previous_state,"
    " purpose_version, occurred_at, recorded_at, valid_until, actor_type, actor, channel,"
    " run_id)"
)
_DELIVERY_INSERT = (
    "INSERT INTO delivery (system_id, event_id, webhook_id, event_type, payload, state,"
    " attempts, next_attempt_at, created_at)"
)
_AUDIT_INSERT = (
    "INSERT INTO audit_entry (seq, recorded_at, action, subject_ref, purpose_key, actor_type,"
    " actor, channel, run_id, detail, prev_hash, hash)"
)


def _subscribers(cur: Any) -> dict[int, list[int]]:
    cur.execute(
        "SELECT sp.purpose_id, sp.system_id FROM system_purpose sp JOIN system s"
        " ON s.id = sp.system_id WHERE s.webhook_url IS NOT NULL ORDER BY sp.system_id"
    )
    found: dict[int, list[int]] = {}
    for purpose_id, system_id in cur.fetchall():
        found.setdefault(purpose_id, []).append(system_id)
    return found


def _event_ids(n: int) -> list[str]:
    """``n`` ids as ``new_event_id`` makes them (UUIDv7: Unix milliseconds, version 7, random;
    RFC 9562), as 32 hex digits, with one call for the randomness of all of them."""
    ms = time.time_ns() // 1_000_000 << 80 | 0x7 << 76 | 0b10 << 62
    pool = os.urandom(10 * n)
    out = []
    for k in range(0, 10 * n, 10):
        r = int.from_bytes(pool[k : k + 10])
        out.append(f"{ms | (r >> 68) << 64 | r & 0x3FFFFFFFFFFFFFFF:032x}")
    return out


def _rows(
    claimed: list[Any],
    keys: dict[int, str],
    hooks: dict[int, list[int]],
    now: datetime,
    head: tuple[int, str],
    pg: bool,
) -> tuple[list[Any], ...]:  # Long: one loop makes every row of a change, as the baseline must
    """Every row of one batch: (state, events, subjects, deliveries, audit rows); the audit
    chain hashed on from ``head`` (seq, hash).

    The JSON texts are written from templates, byte for byte what ``orjson`` makes of the
    write path's dictionaries (compact, sorted keys; an instant without microseconds has no
    fraction): no value needs escaping (ids are hex, purpose keys and external ids follow
    their identifier rules)."""
    now_db: Any = now if pg else now.isoformat(" ", "microseconds")[:-6]
    now_z = orjson.dumps(now, option=orjson.OPT_UTC_Z).decode()
    seqs: dict[int, int] = {}
    states, events, deliveries, entries = [], [], [], []
    head_seq, prev = head
    ids = _event_ids(len(claimed))
    webhook_ids = iter(_event_ids(sum(len(hooks.get(c[2], ())) for c in claimed)))
    tail, now_iso = f'","system","consentflow","system","{RUN_ID}"]', _iso(now)
    for (cid, sid, pid, version, valid_until, last_seq, ref, ext), hex_id in zip(
        claimed, ids, strict=True
    ):
        seq = seqs[sid] = seqs.get(sid, last_seq) + 1
        eid = f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
        if pg:
            ended = valid_until.astimezone(UTC).isoformat()[:-6]
            e_db = eid
        else:
            ended = valid_until.replace(" ", "T").removesuffix(".000000")
            e_db = hex_id
        key = keys[pid]
        states.append((cid, e_db))
        events.append((e_db, sid, pid, seq, version, valid_until, now_db))
        systems = hooks.get(pid, ())
        if systems:
            payload = (
                f'{{"data":{{"effective_at":"{ended}Z","event_id":"{eid}","purpose":"{key}",'
                f'"purpose_version":{version},"sequence":{seq},"state":"expired",'
                f'"subject":"{ext}"}},"timestamp":{now_z},"type":"consent.expired"}}'
            )
            for system_id in systems:
                deliveries.append((system_id, e_db, f"msg_{next(webhook_ids)}", payload, now_db))
        detail = (
            f'{{"deliveries":{len(systems)},"event_id":"{eid}","evidence":null,"from":"given",'
            f'"occurred_at":"{ended}+00:00","purpose_version":{version},"reason":null,'
            f'"seq":{seq},"to":"expired","v":{audit.CONSENT_FORMAT},'
            f'"valid_until":"{ended}+00:00"}}'
        )
        head_seq += 1
        header = f'[{head_seq},"{now_iso}","consent.expire","{ref}","{key}{tail}'
        digest = hashlib.sha256(f"{prev}\n{header}\n{detail}".encode()).hexdigest()
        entries.append((head_seq, now_db, ref, key, detail, prev, digest))
        prev = digest
    return states, events, list(seqs.items()), deliveries, entries


def _columns(rows: list[Any]) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)]


def _write_pg(cur: Any, rows: tuple[list[Any], ...], now: datetime) -> None:
    states, events, subjects, deliveries, entries = rows
    cur.execute(
        "UPDATE consent c SET state = 'expired', updated_at = %s, last_event_id = v.e,"
        " reminder_stage = NULL FROM unnest(%b::bigint[], %b::text[]::uuid[]) AS v(i, e)"
        " WHERE c.id = v.i",
        (now, *_columns(states)),
    )
    cur.execute(
        "UPDATE subject SET last_seq = v.q FROM unnest(%b::bigint[], %b::bigint[]) AS v(i, q)"
        " WHERE subject.id = v.i",
        _columns(subjects),
    )
    cur.execute(
        f"{_EVENT_INSERT} SELECT e, s, p, q, 'expire', 'expired', 'given', v, o, r, o, 'system',"
        f" 'consentflow', 'system', '{RUN_ID}' FROM unnest(%b::text[]::uuid[], %b::bigint[],"
        " %b::bigint[], %b::int[], %b::int[], %b::timestamptz[], %b::timestamptz[])"
        " AS x(e, s, p, q, v, o, r)",
        _columns(events),
    )
    if deliveries:
        cur.execute(
            f"{_DELIVERY_INSERT} SELECT y, e, w, 'consent.expired', b, 'pending', 0, n, n"
            " FROM unnest(%b::bigint[], %b::text[]::uuid[], %b::text[], %b::text[],"
            " %b::timestamptz[])"
            " AS x(y, e, w, b, n)",
            _columns(deliveries),
        )
    cur.execute(
        f"{_AUDIT_INSERT} SELECT q, r, 'consent.expire', s, p, 'system', 'consentflow', 'system',"
        f" '{RUN_ID}', d::json, h0, h FROM unnest(%b::bigint[], %b::timestamptz[], %b::text[],"
        " %b::text[], %b::text[], %b::text[], %b::text[]) AS x(q, r, s, p, d, h0, h)",
        _columns(entries),
    )


def _write_sqlite(cur: Any, rows: tuple[list[Any], ...], now_db: str) -> None:
    states, events, subjects, deliveries, entries = rows
    cur.executemany(
        "UPDATE consent SET state = 'expired', updated_at = ?, last_event_id = ?,"
        " reminder_stage = NULL WHERE id = ?",
        [(now_db, e, c) for c, e in states],
    )
    cur.executemany("UPDATE subject SET last_seq = ? WHERE id = ?", [(q, s) for s, q in subjects])
    cur.executemany(
        f"{_EVENT_INSERT} VALUES (?, ?, ?, ?, 'expire', 'expired', 'given', ?, ?, ?, ?, 'system',"
        f" 'consentflow', 'system', '{RUN_ID}')",
        [(*e, e[5]) for e in events],
    )
    cur.executemany(
        f"{_DELIVERY_INSERT} VALUES (?, ?, ?, 'consent.expired', ?, 'pending', 0, ?, ?)",
        [(*d, d[4]) for d in deliveries],
    )
    cur.executemany(
        f"{_AUDIT_INSERT} VALUES (?, ?, 'consent.expire', ?, ?, 'system', 'consentflow',"
        f" 'system', '{RUN_ID}', ?, ?, ?)",
        entries,
    )


def run_baseline(engine: Engine, as_of: datetime, batch: int) -> tuple[int, float, float | None]:
    """(b): the same rows as the sweep, by the fastest plain SQL: how many expired, in how many
    seconds, and CPU seconds (this process and its PostgreSQL backend)."""
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    cur = raw.cursor()
    cpu = CpuClock(backend_pid(cur, pg))
    if pg:
        raw.commit()
    started = time.perf_counter()
    cur.execute("SELECT id, key FROM purpose")
    keys = dict(cur.fetchall())
    claim = _CLAIM.format(
        mark="%s" if pg else "?", limit=batch, lock=" FOR UPDATE OF c, s SKIP LOCKED" if pg else ""
    )
    head_sql = "SELECT seq, hash FROM audit_head WHERE id = 1"
    done = 0
    while True:
        now = datetime.now(UTC)
        if not pg:
            cur.execute("BEGIN IMMEDIATE")
        cur.execute(claim, (as_of if pg else as_of.isoformat(" ", "microseconds")[:-6],))
        claimed = cur.fetchall()
        if not claimed:
            raw.rollback() if pg else cur.execute("ROLLBACK")
            break
        hooks = _subscribers(cur)
        cur.execute(head_sql)  # read now, locked (PostgreSQL) as the last write below
        rows = _rows(claimed, keys, hooks, now, cur.fetchone(), pg)
        head = rows[4][-1]
        if pg:
            _write_pg(cur, rows, now)
            cur.execute(head_sql + " FOR UPDATE")
            cur.execute(
                "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (head[0], head[6])
            )
            raw.commit()
        else:
            _write_sqlite(cur, rows, rows[1][0][6])
            cur.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head[0], head[6]))
            cur.execute("COMMIT")
        done += len(claimed)
    seconds, cpu_seconds = time.perf_counter() - started, cpu.seconds()
    raw.close()
    return done, seconds, cpu_seconds


# --------------------------------------------------------------------------------------------
# (c) the bare limit
# --------------------------------------------------------------------------------------------

_BARE = {
    "bare_state": "id bigint, state text, purpose_version int, given_at timestamptz,"
    " valid_until timestamptz, updated_at timestamptz, last_event_id uuid, reminder_stage int",
    "bare_history": "id uuid, subject_id bigint, purpose_id bigint, seq int, action text,"
    " state text, previous_state text, purpose_version int, occurred_at timestamptz,"
    " recorded_at timestamptz, valid_until timestamptz, actor_type text, actor text,"
    " channel text, reason text, evidence json, run_id text",
    "bare_outbox": "system_id bigint, event_id uuid, webhook_id text, event_type text,"
    " payload text, state text, attempts int, next_attempt_at timestamptz,"
    " created_at timestamptz",
    "bare_audit": "seq bigint, recorded_at timestamptz, action text, subject_ref text,"
    " purpose_key text, actor_type text, actor text, channel text, run_id text, detail json,"
    " prev_hash text, hash text",
}


def _bare_batch(start: int, n: int, as_of: datetime, pg: bool) -> dict[str, list[Any]]:
    """Rows shaped like one batch's real ones (same columns, values of the same size)."""
    now = datetime.now(UTC)

    def ts(value: datetime) -> Any:
        return value if pg else value.isoformat(" ", "microseconds")[:-6]

    def ident() -> Any:
        u = new_event_id()
        return u if pg else u.hex

    out: dict[str, list[Any]] = {name: [] for name in _BARE}
    ref, h = "f" * 64, "e" * 64
    for i in range(start, start + n):
        e, ended = ident(), as_of - timedelta(seconds=i % 86400)
        at = ended.isoformat()
        detail = (
            f'{{"deliveries":1,"event_id":"{uuid.UUID(int=i)}","evidence":null,"from":"given",'
            f'"occurred_at":"{at}","purpose_version":1,"reason":null,"seq":{i % 7},'
            f'"to":"expired","v":2,"valid_until":"{at}"}}'
        )
        out["bare_state"].append((i, "expired", 1, ts(ended), ts(ended), ts(now), e, None))
        out["bare_history"].append(
            (e, i // 4, i % 4, i % 7, "expire", "expired", "given", 1, ts(ended), ts(now),
             ts(ended), "system", "consentflow", "system", None, None, RUN_ID)
        )  # fmt: skip
        out["bare_outbox"].append(
            (1, e, f"msg_{uuid.uuid4().hex}", "consent.expired", detail + " " * 60, "pending", 0,
             ts(now), ts(now))
        )  # fmt: skip
        out["bare_audit"].append(
            (i, ts(now), "consent.expire", ref, "profiling", "system", "consentflow", "system",
             RUN_ID, detail, h, h)
        )  # fmt: skip
    return out


def run_bare(url: str, due: int, batch: int, as_of: datetime) -> tuple[float, float | None]:
    """(c): seconds (and CPU seconds) to write ``due`` state, history, outbox and audit rows
    into bare tables, ``batch`` of each per transaction; the rows are made before each batch's
    timer starts."""
    engine = db.make_engine(url)
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    cur = raw.cursor()
    for name, columns in _BARE.items():
        if not pg:
            columns = columns.replace("timestamptz", "datetime").replace("uuid", "char(32)")
        cur.execute(f"CREATE TABLE {name} ({columns})")
    pid = backend_pid(cur, pg)
    raw.commit()
    write: Callable[[str, list[Any]], None]
    if pg:

        def write(name: str, rows: list[Any]) -> None:
            with cur.copy(f"COPY {name} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    else:

        def write(name: str, rows: list[Any]) -> None:
            marks = ",".join("?" * len(rows[0]))
            cur.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)

    seconds, cpu_seconds = 0.0, 0.0  # type: float, float | None
    for start in range(0, due, batch):
        rows = _bare_batch(start, min(batch, due - start), as_of, pg)
        started, cpu = time.perf_counter(), CpuClock(pid)
        if not pg:
            cur.execute("BEGIN IMMEDIATE")
        for name, table_rows in rows.items():
            write(name, table_rows)
        raw.commit() if pg else cur.execute("COMMIT")
        seconds += time.perf_counter() - started
        used = cpu.seconds()
        cpu_seconds = None if used is None or cpu_seconds is None else cpu_seconds + used
    raw.close()
    engine.dispose()
    return seconds, cpu_seconds


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def totals(engine: Engine) -> tuple[int, int, int, int]:
    """Expired consents, history events, outbox rows, audit entries; the chain verified."""
    with engine.connect() as conn:
        found = tuple(
            conn.execute(text(sql)).scalar_one()
            for sql in (
                "SELECT count(*) FROM consent WHERE state = 'expired'",
                "SELECT count(*) FROM consent_event",
                "SELECT count(*) FROM delivery",
                "SELECT count(*) FROM audit_entry",
            )
        )
    with db.session_scope(engine, readonly=True) as s:
        checked = audit.verify(s)
        assert checked.ok, checked
    return found  # type: ignore[return-value]


def _sample(engine: Engine, limit: int = 200) -> Iterator[tuple[Any, ...]]:
    """The first expired consents' rows, without ids, times and hashes."""
    sql = text(
        "SELECT c.id, c.state, c.purpose_version, c.given_at, c.valid_until, c.reminder_stage,"
        " e.subject_id, e.seq, e.action, e.state, e.previous_state, e.occurred_at,"
        " e.valid_until, e.actor_type, e.actor, e.channel, e.reason, e.run_id,"
        " d.event_type, d.state, d.payload, a.seq, a.subject_ref, a.purpose_key,"
        " CAST(a.detail AS TEXT),"
        " s.last_seq FROM consent c JOIN consent_event e ON e.id = c.last_event_id"
        " JOIN delivery d ON d.event_id = e.id JOIN subject s ON s.id = c.subject_id"
        " JOIN audit_entry a ON a.action = 'consent.expire' AND a.subject_ref = s.subject_ref"
        " AND a.purpose_key = (SELECT key FROM purpose WHERE id = c.purpose_id)"
        " WHERE c.state = 'expired' ORDER BY c.id LIMIT :n"
    )
    with engine.connect() as conn:
        for row in conn.execute(sql, {"n": limit}):
            values = list(row)
            payload, detail = orjson.loads(values[20]), orjson.loads(values[24])
            for raw, parsed in ((values[20], payload), (values[24], detail)):  # compact, sorted
                assert orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS) == raw.encode(), raw
            del payload["timestamp"], payload["data"]["event_id"], detail["event_id"]
            values[20], values[24] = payload, detail
            yield tuple(values)


def check_same_rows(a: Engine, b: Engine) -> None:
    """The baseline wrote what the sweep wrote: equal in every column but ids, times, hashes."""
    rows_a, rows_b = list(_sample(a)), list(_sample(b))
    assert rows_a and rows_a == rows_b, (rows_a[:1], rows_b[:1])

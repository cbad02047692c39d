"""The metrics' all-time counters, kept per process and read incrementally from the database.

A scrape must not re-read a year of history, so each process keeps a running total (``Totals``)
per database and, on each scrape, folds in only what was committed since its last one. The
numbers still come from the tables, never from an in-memory event: every process folds the same
committed rows, so whichever answers a scrape reports the same counts, and a restart costs one
full pass (the first scrape of a process) and nothing else. Three sources, each with its rule
for "what is new":

- **The audit trail** (flow runs, dead letters): entries with ``seq`` above the last one folded
  and at most ``audit_head.seq``. Appends are serialised on the head's row lock, held until
  commit, so seq order is commit order: every entry up to the head a scrape reads is committed
  and visible to it, and none can appear below it later.
- **Delivery attempts** (append-only) and **email messages** (a row leaves ``claimed`` once for
  an outcome that never changes; a retry is a new row): by ``id``. Ids come from a sequence, not
  in commit order on PostgreSQL, so an id below the highest folded one that is not visible yet
  (a transaction still open, or rolled back) is kept as a *gap* and looked up again on every
  scrape until it appears or is ``GAP_HORIZON`` old (no writing transaction stays open that
  long: an attempt or a claim is recorded in a short one). An email still ``claimed`` is kept
  by id the same way and counted when its outcome is recorded; those ids are the
  ``emails_claimed`` gauge.

A total is tied to the audit chain it was folded from (``audit_seq``, ``audit_hash``): before
folding on top of it, the scrape checks that its entry at ``audit_seq`` still has that hash (one
primary-key read). A database restored from a backup, truncated or swapped for another one under
the same URL fails that check and the totals are folded again from nothing, so they never carry
counts over from a history that is no longer there. Totals are immutable; the last few per
database are kept (``KEEP``) so a scrape whose snapshot is a little older than the latest total
(two scrapes at once) folds from an older one instead of starting over.

Failure modes: none of their own; a database error fails the scrape and leaves the kept totals
as they were. Rows deleted since (only the retention sweep deletes attempts and emails, and only
old ones) stay counted until the process restarts; after a restart the totals count the rows kept.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, case, cast, func, literal_column, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlmodel import Session, col

from consentflow.audit import GENESIS
from consentflow.db import is_postgres
from consentflow.models import (
    AuditEntry,
    AuditHead,
    Delivery,
    DeliveryAttempt,
    EmailMessage,
    utcnow,
)
from consentflow.timeutil import as_utc

#: Upper bounds of the run-duration buckets, in seconds (``+Inf`` is added).
RUN_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
CLAIMED = "claimed"
#: How long an id below the highest folded one may stay missing before it counts as rolled back.
GAP_HORIZON = timedelta(hours=1)
#: Totals kept per database (newest last).
KEEP = 4
#: On a process's first scrape, missing ids this close below the highest one are kept as gaps
#: (transactions open at that moment); everything older is counted in one grouped pass.
START_WINDOW = 10_000
#: Ids looked up again per statement.
_CHUNK = 1000
_LOCK = threading.Lock()
_KEPT: dict[str, list[Totals]] = {}


@dataclass(frozen=True)
class RunStats:
    """One (flow, outcome)'s runs: how many had both times, their summed seconds, how many took
    at most each of ``RUN_BUCKETS`` (cumulative), and when the latest was recorded."""

    count: int = 0
    total: float = 0.0
    buckets: tuple[int, ...] = (0,) * len(RUN_BUCKETS)
    last: datetime | None = None

    def __add__(self, other: RunStats) -> RunStats:
        last = max((t for t in (self.last, other.last) if t is not None), default=None)
        buckets = tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True))
        return RunStats(self.count + other.count, self.total + other.total, buckets, last)

    def cumulative(self) -> list[int]:
        """The bucket counts, ``+Inf`` (every run with a duration) last."""
        return [*self.buckets, self.count]


@dataclass(frozen=True)
class Rows:
    """A table folded by id: ``counts`` by (key, outcome) of the final rows up to ``top``;
    ``gaps`` (id: since when) not visible yet; ``claimed`` (id: key) seen but not final."""

    top: int = 0
    counts: Mapping[tuple[Any, str], int] = field(default_factory=dict)
    gaps: Mapping[int, datetime] = field(default_factory=dict)
    claimed: Mapping[int, Any] = field(default_factory=dict)

    def fold(self, found: Iterable[tuple[int, Any, str]], now: datetime) -> Rows:
        """With ``found``: the (id, key, outcome) rows above ``top`` and those of the open ids."""
        counts = Counter(self.counts)
        gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_HORIZON}
        claimed = dict(self.claimed)
        top, seen = self.top, set()
        for row_id, key, outcome in found:
            seen.add(row_id)
            gaps.pop(row_id, None)
            if outcome == CLAIMED:
                claimed[row_id] = key
                continue
            claimed.pop(row_id, None)
            counts[(key, outcome)] += 1
        new_top = max(seen, default=top)
        if new_top > top and len([i for i in seen if i > top]) < new_top - top:
            gaps.update({i: now for i in range(top + 1, new_top) if i not in seen})
        return Rows(max(top, new_top), dict(counts), gaps, claimed)

    def open_ids(self) -> list[int]:
        return sorted({*self.gaps, *self.claimed})


@dataclass(frozen=True)
class Totals:
    """Everything folded from one database up to audit entry ``audit_seq``."""

    audit_seq: int = 0
    audit_hash: str = GENESIS
    runs: Mapping[tuple[str, str], RunStats] = field(default_factory=dict)
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    attempts: Rows = field(default_factory=Rows)
    emails: Rows = field(default_factory=Rows)


def current(session: Session, *, now: datetime | None = None) -> Totals:
    """The totals as of ``session``'s view of the database, folded on the latest kept ones."""
    now = now or utcnow()
    head = session.execute(
        select(col(AuditHead.seq), col(AuditHead.hash)).where(col(AuditHead.id) == 1)
    ).first()
    seq, digest = (int(head[0]), str(head[1])) if head else (0, GENESIS)
    key = str(session.get_bind().engine.url)
    with _LOCK:  # one fold at a time per process: two scrapes never both start from nothing
        kept = _KEPT.setdefault(key, [])
        totals = _fold(session, _base(session, kept, seq, digest), seq, digest, now)
        kept[:] = sorted([*kept, totals], key=lambda t: t.audit_seq)[-KEEP:]
        return totals


def forget() -> None:
    """Drop every kept total (the next scrape folds from nothing)."""
    with _LOCK:
        _KEPT.clear()


def _base(session: Session, kept: list[Totals], seq: int, digest: str) -> Totals:
    """The newest kept total this snapshot can fold on: at or below its head and still part of
    its chain; else nothing (fold from the start)."""
    for totals in reversed(kept):
        if totals.audit_seq > seq:
            continue
        if totals.audit_seq == seq:
            return totals if totals.audit_hash == digest else Totals()
        if totals.audit_seq == 0:  # nothing to check it against: fold from the start
            return Totals()
        found = session.execute(
            select(col(AuditEntry.hash)).where(col(AuditEntry.seq) == totals.audit_seq)
        ).scalar()
        return totals if found == totals.audit_hash else Totals()
    return Totals()


def _fold(session: Session, base: Totals, seq: int, digest: str, now: datetime) -> Totals:
    runs, dead = _audit(session, base, seq)
    return replace(
        base,
        audit_seq=seq,
        audit_hash=digest,
        runs=runs,
        dead_letters=dead,
        attempts=(
            base.attempts.fold(_attempts(session, base.attempts), now)
            if base.attempts != Rows()
            else _start_attempts(session, now)
        ),
        emails=(
            base.emails.fold(_emails(session, base.emails), now)
            if base.emails != Rows()
            else _start_emails(session, now)
        ),
    )


def _detail() -> Any:
    """The audit entry's JSON ``detail`` column (its SQL JSON operators are not typed)."""
    return sa_inspect(AuditEntry).columns["detail"]


def _audit(
    session: Session, base: Totals, seq: int
) -> tuple[dict[tuple[str, str], RunStats], dict[str, int]]:
    """Runs and dead letters with base.audit_seq < seq <= the head's, added to the base's."""
    runs = dict(base.runs)
    for key, stats in _runs(session, base.audit_seq, seq):
        runs[key] = runs.get(key, RunStats()) + stats
    system = _detail()["system"].as_string()
    stmt = (
        select(system, func.count())
        .where(col(AuditEntry.action) == "delivery.dead_lettered")
        .where(col(AuditEntry.seq) > base.audit_seq, col(AuditEntry.seq) <= seq)
        .group_by(system)
    )
    dead = Counter(base.dead_letters)
    for name, n in session.execute(stmt):
        dead[str(name)] += int(n)
    return runs, dict(dead)


def _seconds(session: Session, later: Any, earlier: Any) -> Any:
    """``later - earlier`` in seconds, for two ISO-8601 strings, in SQL (millisecond precision
    on SQLite, whose ``julianday`` keeps milliseconds)."""
    if is_postgres(session):
        stamp = TIMESTAMP(timezone=True)
        return func.extract("epoch", cast(later, stamp) - cast(earlier, stamp))
    return cast((func.julianday(later) - func.julianday(earlier)) * 86400.0, Float)


def _runs(session: Session, after: int, upto: int) -> Iterator[tuple[tuple[str, str], RunStats]]:
    """One grouped pass over the ``flow.run`` entries in (after, upto]: each duration is worked
    out once (a materialised CTE), then counted into every bucket."""
    detail = _detail()
    finished, started = detail["finished_at"].as_string(), detail["started_at"].as_string()
    entries = (
        select(
            detail["flow"].as_string().label("flow"),
            detail["outcome"].as_string().label("outcome"),
            _seconds(session, finished, started).label("seconds"),
            col(AuditEntry.recorded_at).label("recorded_at"),
        )
        .where(col(AuditEntry.action) == "flow.run")
        .where(col(AuditEntry.seq) > after, col(AuditEntry.seq) <= upto)
        .cte("run")
        .prefix_with("MATERIALIZED")
    )
    seconds = entries.c.seconds
    stmt = select(
        entries.c.flow,
        entries.c.outcome,
        func.count(seconds),
        func.coalesce(func.sum(seconds), 0.0),
        func.max(entries.c.recorded_at),
        *[func.count().filter(seconds <= bound) for bound in RUN_BUCKETS],
    ).group_by(entries.c.flow, entries.c.outcome)
    for flow, outcome, n, total, latest, *buckets in session.execute(stmt):
        # A run recorded without both times (a crash, afterwards) has no duration: no bucket.
        stats = RunStats(int(n), float(total), tuple(int(b) for b in buckets), as_utc(latest))
        yield (str(flow), str(outcome)), stats


def _reopened(column: Any, rows: Rows) -> Iterable[Any]:
    """``column > top``, then ``column IN (...)`` for the open ids, a chunk per condition."""
    ids = rows.open_ids()
    yield column > rows.top
    for start in range(0, len(ids), _CHUNK):
        yield column.in_(ids[start : start + _CHUNK])


def _outcome() -> Any:
    """An attempt's outcome: delivered (2xx), failed (another answer), error (none)."""
    status = col(DeliveryAttempt.status_code)
    return case(
        ((status >= 200) & (status < 300), literal_column("'delivered'")),
        (status.is_not(None), literal_column("'failed'")),
        else_=literal_column("'error'"),
    ).label("outcome")


def _attempts(session: Session, rows: Rows) -> Iterable[tuple[int, Any, str]]:
    for condition in _reopened(col(DeliveryAttempt.id), rows):
        stmt = (
            select(col(DeliveryAttempt.id), col(Delivery.system_id), _outcome())
            .join(Delivery, col(Delivery.id) == col(DeliveryAttempt.delivery_id))
            .where(condition)
        )
        yield from ((int(i), sid, str(o)) for i, sid, o in session.execute(stmt))


def _emails(session: Session, rows: Rows) -> Iterable[tuple[int, Any, str]]:
    for condition in _reopened(col(EmailMessage.id), rows):
        stmt = select(col(EmailMessage.id), col(EmailMessage.kind), col(EmailMessage.status))
        yield from ((int(i), k, str(o)) for i, k, o in session.execute(stmt.where(condition)))


def _gaps(session: Session, ident: Any, top: int, now: datetime) -> dict[int, datetime]:
    """The ids of the last ``START_WINDOW`` below ``top`` that are not visible (yet)."""
    low = max(0, top - START_WINDOW)
    present = set(session.scalars(select(ident).where(ident > low, ident <= top)))
    return {i: now for i in range(low + 1, top + 1) if i not in present}


def _start_attempts(session: Session, now: datetime) -> Rows:
    """A process's first fold: one grouped pass up to the highest id, gaps near it."""
    ident = col(DeliveryAttempt.id)
    top = int(session.execute(select(func.max(ident))).scalar() or 0)
    outcome = _outcome()
    stmt = (
        select(col(Delivery.system_id), outcome, func.count())
        .join(Delivery, col(Delivery.id) == col(DeliveryAttempt.delivery_id))
        .where(ident <= top)
        .group_by(col(Delivery.system_id), outcome)
    )
    counts = {(sid, str(o)): int(n) for sid, o, n in session.execute(stmt)}
    return Rows(top, counts, _gaps(session, ident, top, now), {})


def _start_emails(session: Session, now: datetime) -> Rows:
    """Like ``_start_attempts``; the messages still claimed are kept by id."""
    ident, kind, status = col(EmailMessage.id), col(EmailMessage.kind), col(EmailMessage.status)
    top = int(session.execute(select(func.max(ident))).scalar() or 0)
    stmt = select(kind, status, func.count()).where(ident <= top).group_by(kind, status)
    grouped = [(k, str(st), int(n)) for k, st, n in session.execute(stmt)]
    counts = {(k, st): n for k, st, n in grouped if st != CLAIMED}
    open_: dict[int, Any] = {}
    if any(st == CLAIMED for _, st, _ in grouped):  # usually none: no second pass
        claimed = select(ident, kind).where(status == CLAIMED, ident <= top)
        open_ = {int(i): k for i, k in session.execute(claimed)}
    return Rows(top, counts, _gaps(session, ident, top, now), open_)

"""The delivery engine: drains the webhook outbox that the ledger writes.

One run of ``deliver_due`` (one worker) works like this:

1. **Lanes.** It finds the active systems that have due deliveries and starts one lane (an
   asyncio task) per system; when a lane finishes, it looks again. Each lane claims its system's
   due rows in batches, sends them with at most ``per_endpoint`` requests in flight, records each
   result as its request completes, and claims the next batch while the last requests of the
   current one are still in flight (so a slow endpoint's lane does not drain to nothing between
   batches). Each lane has its own ``httpx.AsyncClient`` (connection pool: a pool's bookkeeping
   visits each of its connections on every request), so a slow or dead endpoint only ever
   slows its own lane.
2. **Claims.** A claim is one short transaction: select due rows (pending, ``next_attempt_at``
   reached, no live lease, system active) ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has a
   single writer), set ``leased_until`` and commit. Other workers skip rows under a live lease;
   if this worker dies, its rows become claimable again once the lease has passed. The lease is
   long enough for a whole batch to time out.
3. **Sending.** The stored body is sent byte for byte with the delivery's fixed ``webhook-id``, a
   fresh timestamp and signature (``signing.py``, with the system's secrets decrypted at claim
   time: ``secretbox.py``), redirects not followed, a connect timeout of 5 s and a total timeout
   (``CONSENTFLOW_WEBHOOK_TIMEOUT``, default 15 s). ``GuardedBackend`` re-checks the SSRF rules on
   every connection. Every request of a pass carries the same signed audit head
   (``consentflow-audit-anchor``: ``anchors``), read once, when the pass first finds something
   due; if it cannot be read (the chain's head is broken) the pass logs an error and sends
   without it, since a withdrawal must not wait for the witness. Whatever the receiver answers
   (any bytes, any header) is an attempt: the body's excerpt is made plain, short text
   (``excerpt.py``: bounded read, bounded inflate, no control characters) and ``Retry-After`` is
   read strictly (``schedule.py``). Each attempt is logged (in the Prefect run's logs inside a
   run: ``runlog``).
4. **Results.** Each result is recorded as soon as its request completes (group commit: the
   results that complete while a record transaction runs are written together by the next one,
   and each request's task waits for its own commit): a ``delivery_attempt`` row, and the
   delivery moves on: 2xx delivered; 410 disables
   the system (its deliveries are held, never dropped; the lane sends no more and gives back
   the leases of what it has not sent); anything else is retried on the persisted schedule
   (``schedule.py``) or, when the schedule is exhausted, dead-lettered with an audit entry and
   an alert. An update only applies while this worker still holds the row's lease (the lease
   timestamp is the fencing token), so a worker that lost its lease cannot overwrite the result
   of the one that took over. If recording a result fails, the attempt is recorded without what
   the receiver wrote (status and times kept; error class ``Unrecordable``): a group that fails
   is recorded again one result at a time, so one bad answer never stops the run nor loses
   other deliveries' results; only a database that refuses that too fails the lane (after its
   other requests are recorded). On SQLite (one writer) the engine talks to the database from
   one thread; on PostgreSQL from up to four.

Claims and results (steps 2 and 4) live in ``outbox.py``, the group commit in ``recording.py``,
one attempt (step 3) in ``attempt.py``, the run's counts in ``report.py``; this module runs the
lanes.

**Cancels and crashes.** A cancel of the run (``asyncio`` cancellation, Ctrl-C through
``asyncio.run``) cancels the lanes; an answer whose status has arrived is still recorded (the
record is shielded and awaited) before the cancel goes on, so no acknowledged delivery is sent
again because of a cancel. Delivery is at-least-once only across a hard kill: a worker killed
between an answer and its record (at most ``per_endpoint`` requests per lane) sends those again
after the lease. Receivers deduplicate on ``webhook-id``. The ``Report`` is filled as results are
recorded; pass one in to keep the counts of a run that is cancelled.

Time is injectable: ``now`` fixes the clock used for claims, leases and the retry schedule (tests
simulate days of outage without sleeping). The ``webhook-timestamp`` header always carries the
real time, because receivers check it against their own clock.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import anchors, db
from consentflow.delivery import alerts, runlog
from consentflow.delivery import excerpt as excerpts
from consentflow.delivery.attempt import CONNECT_TIMEOUT, USER_AGENT, make_client, send
from consentflow.delivery.outbox import (  # re-exported (see __all__)
    DEAD,
    DELIVERED,
    DISABLED,
    DUE,
    HELD,
    RETRIED,
    SUPERSEDED,
    Claimed,
    Result,
    claim,
    due_systems,
    held_counts,
    record,
    release,
)
from consentflow.delivery.recording import Recorder
from consentflow.delivery.report import Report
from consentflow.models import (
    System,
    utcnow,
)
from consentflow.settings import get_settings

__all__ = [
    "CONNECT_TIMEOUT",
    "DEAD",
    "DELIVERED",
    "DISABLED",
    "DUE",
    "EXCERPT_BYTES",
    "EXCERPT_CHARS",
    "HELD",
    "RETRIED",
    "SUPERSEDED",
    "USER_AGENT",
    "Claimed",
    "Options",
    "Report",
    "Result",
    "adeliver_due",
    "claim",
    "deliver_due",
    "due_systems",
    "held_counts",
    "make_client",
    "preview",
    "record",
    "release",
    "send",
]

EXCERPT_BYTES = excerpts.EXCERPT_BYTES
EXCERPT_CHARS = excerpts.EXCERPT_CHARS


@dataclass(frozen=True)
class Options:
    """How one worker run behaves. Defaults suit the scheduled flow."""

    batch_size: int = 50
    per_endpoint: int = 4
    #: Total timeout per request, seconds (None: ``CONSENTFLOW_WEBHOOK_TIMEOUT``).
    timeout: float | None = None
    #: Stop claiming new batches after this many seconds (None: until nothing is due).
    max_seconds: float | None = None
    #: Stop after claiming this many deliveries (None: no limit).
    limit: int | None = None
    #: Only these systems (names; None: all).
    systems: Sequence[str] | None = None
    #: How long a claim is held; None: long enough for a whole batch to time out.
    lease: timedelta | None = None

    def total_timeout(self) -> float:
        return self.timeout if self.timeout is not None else get_settings().webhook_timeout

    def lease_for(self) -> timedelta:
        if self.lease is not None:
            return self.lease
        # a batch is claimed while up to 2 rounds of the previous one are still to go
        rounds = math.ceil(self.batch_size / self.per_endpoint) + 2
        return timedelta(seconds=rounds * (self.total_timeout() + 1) + 60)


# --------------------------------------------------------------------------------------- runs


@dataclass
class _Run:
    engine: Engine
    options: Options
    now: datetime | None
    run_id: str | None
    on_result: Callable[[str, str], None] | None
    report: Report
    logger: runlog.Logger = field(default_factory=runlog.logger)
    claimed: int = 0
    deadline: float | None = None
    #: The pass's ``consentflow-audit-anchor`` value: None until read, "" if it could not be.
    anchor: str | None = None
    #: The threads that talk to the database: at most 4 sessions at a time on PostgreSQL, one
    #: on SQLite (one writer at a time anyway: threads queueing on its lock would sleep in its
    #: busy handler, milliseconds at a time, instead of waiting their turn here).
    pool: ThreadPoolExecutor = field(init=False)
    recorder: Recorder = field(init=False)

    def __post_init__(self) -> None:
        threads = 1 if self.engine.dialect.name == "sqlite" else 4
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="consentflow-delivery")
        self.recorder = Recorder(
            self._submit, run_id=self.run_id, logger=self.logger, recorded=self._recorded
        )

    def _recorded(self, result: Result, outcome: str) -> None:
        self.report.note(result, outcome)
        if self.on_result:
            self.on_result(result.claimed.system, outcome)

    def clock(self) -> datetime:
        return self.now or utcnow()

    def stopping(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        return self.options.limit is not None and self.claimed >= self.options.limit

    def _submit(self, fn: Callable[[Session], Any]) -> Future[Any]:
        def work() -> Any:
            with db.session_scope(self.engine) as session:
                return fn(session)

        return self.pool.submit(work)

    async def db(self, fn: Callable[[Session], Any]) -> Any:
        """``fn`` in a transaction of its own, in a database thread."""
        return await asyncio.wrap_future(self._submit(fn))


def _claim_for(
    s: Session, *, system_id: int, now: datetime, limit: int, lease: timedelta
) -> list[Claimed]:
    return claim(s, system_id, now=now, limit=limit, lease=lease)


def _release_for(s: Session, *, claims: Sequence[Claimed]) -> int:
    return release(s, claims)


async def _lane(run: _Run, system_id: int) -> int:
    """One system's lane, with a client (a connection pool) of its own: a pool's bookkeeping
    looks at each of its connections on every request, so one pool shared by every endpoint
    would make each request pay for all the others' connections."""
    async with make_client(run.options.total_timeout()) as client:
        return await _lane_on(run, client, system_id)


async def _lane_on(run: _Run, client: httpx.AsyncClient, system_id: int) -> int:
    """Claim, send and record (each result as it completes) for one system, until nothing is
    due; returns how many deliveries it claimed. At most ``per_endpoint`` requests are in
    flight; the next batch is claimed while the last requests of the current one are still in
    flight, so a slow endpoint's lane never drains to nothing between batches. A 410 stops the
    lane: what it has not sent is given back; so is it after a failure, raised once the
    requests in flight are recorded."""
    opts = run.options
    timeout = opts.total_timeout()
    lease = opts.lease_for()
    gone = asyncio.Event()  # the system answered 410 Gone and is disabled now
    queue: collections.deque[Claimed] = collections.deque()  # claimed, not yet sent
    flying: set[asyncio.Task[str]] = set()
    handled, exhausted = 0, False
    failure: BaseException | None = None

    async def one(c: Claimed) -> str:
        result = await send(
            client, c, timeout=timeout, clock=run.clock, logger=run.logger, anchor=run.anchor
        )
        if result.gone:
            gone.set()  # before the next request may start
        outcome = await run.recorder.record(result)
        if result.interrupted:
            raise asyncio.CancelledError
        return outcome

    def sending() -> bool:
        return failure is None and not gone.is_set()

    try:
        while True:
            if not exhausted and sending() and len(queue) < opts.per_endpoint:
                want = opts.batch_size
                if opts.limit is not None:
                    want = min(want, opts.limit - run.claimed)
                batch: list[Claimed] = []
                if not run.stopping():
                    batch = await run.db(
                        functools.partial(
                            _claim_for,
                            system_id=system_id,
                            now=run.clock(),
                            limit=want,
                            lease=lease,
                        )
                    )
                exhausted = not batch
                run.claimed += len(batch)
                handled += len(batch)
                queue.extend(batch)
            while queue and sending() and len(flying) < opts.per_endpoint:
                flying.add(asyncio.create_task(one(queue.popleft())))
            if not flying:
                break
            done, _ = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                flying.discard(task)
                if task.cancelled():
                    failure = failure or asyncio.CancelledError()
                elif task.exception() is not None:
                    failure = failure or task.exception()
    except BaseException:  # a cancel: each answer already received is recorded first
        for task in flying:
            task.cancel()
        await asyncio.gather(*flying, return_exceptions=True)
        raise
    if queue:
        await run.db(functools.partial(_release_for, claims=list(queue)))
    if failure is not None:
        raise failure
    return handled


async def _read_anchor(run: _Run) -> None:
    """The pass's signed audit head, read once; on failure "" (sent without), logged."""

    def read() -> str:
        with db.session_scope(run.engine, readonly=True) as session:
            return anchors.header_value(session)

    try:
        run.anchor = await asyncio.wrap_future(run.pool.submit(read))
    except Exception as exc:
        run.anchor = ""
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        run.logger.error("no audit anchor on this pass's webhooks: %s", why)


async def _drive(run: _Run) -> BaseException | None:
    """Run one lane per system with due deliveries until none is left; the first lane failure
    (the others finish first). If this is cancelled, the lanes are too, and each records the
    answers it already has before the cancel goes on."""
    names = run.options.systems
    lanes: dict[int, asyncio.Task[int]] = {}
    idle: set[int] = set()  # systems whose last lane found nothing to claim
    failure: BaseException | None = None
    try:
        while True:
            if not run.stopping() and failure is None:
                due = await run.db(lambda s: due_systems(s, run.clock(), names))
                if due and run.anchor is None:
                    await _read_anchor(run)
                for system_id in due:
                    if system_id not in lanes and system_id not in idle:
                        lanes[system_id] = asyncio.create_task(_lane(run, system_id))
            if not lanes:
                return failure
            done, _ = await asyncio.wait(lanes.values(), return_when=asyncio.FIRST_COMPLETED)
            for system_id, task in list(lanes.items()):
                if task in done:
                    del lanes[system_id]
                    exc = task.exception()
                    if exc is not None:
                        run.logger.error("delivery lane for system %s failed: %r", system_id, exc)
                        failure = failure or exc
                    elif task.result() == 0:
                        idle.add(system_id)
    except BaseException:
        for task in lanes.values():
            task.cancel()
        await asyncio.gather(*lanes.values(), return_exceptions=True)
        raise


async def adeliver_due(
    engine: Engine | None = None,
    *,
    options: Options | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
    on_result: Callable[[str, str], None] | None = None,
    report: Report | None = None,
) -> Report:
    """Drain due deliveries until none is left (or the time or count limit); see the module doc.

    ``on_result(system, outcome)`` is called as each result is recorded. ``report`` (default: a
    new one) is filled as results are recorded, so a caller still has the counts of a run that
    was cancelled or failed part-way.
    """
    run = _Run(
        engine or db.get_engine(), options or Options(), now, run_id, on_result, report or Report()
    )
    if run.options.max_seconds is not None:
        run.deadline = time.monotonic() + run.options.max_seconds
    try:
        failure = await _drive(run)
        held = await run.db(lambda s: held_counts(s, run.options.systems))
        for name, n in held.items():
            run.report.add(name, HELD, n)
    finally:
        run.pool.shutdown(wait=True)  # every record started is committed (or failed) first
    if run.report.dead:  # one alert per run, after the dead letters are committed
        await asyncio.to_thread(
            alerts.dead_lettered, run.report.dead, run_id=run.run_id, logger=run.logger
        )
    if failure is not None:
        raise failure
    return run.report


def deliver_due(
    engine: Engine | None = None,
    *,
    options: Options | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
    on_result: Callable[[str, str], None] | None = None,
    report: Report | None = None,
) -> Report:
    """Synchronous ``adeliver_due`` (runs its own event loop)."""
    return asyncio.run(
        adeliver_due(
            engine, options=options, now=now, run_id=run_id, on_result=on_result, report=report
        )
    )


def preview(
    session: Session, *, now: datetime | None = None, names: Sequence[str] | None = None
) -> Report:
    """What a run would do now, without sending: due and held deliveries per system."""
    now = now or utcnow()
    report = Report()
    due = due_systems(session, now, names)
    if due:
        rows = session.exec(
            select(col(System.id), col(System.name)).where(col(System.id).in_(list(due)))
        )
        for sid, name in rows.all():
            if sid is not None:
                report.add(name, DUE, due[sid])
    for name, n in held_counts(session, names).items():
        report.add(name, HELD, n)
    return report

"""propagate: deliver withdrawal webhooks, as a loop that wakes the moment a withdrawal commits.

One run is one loop of at most ``run_seconds``: deliver everything due (``engine.deliver_due``),
then wait (``delivery.wakeup``) until the outbox may have new due work: on PostgreSQL a
``LISTEN consentflow_outbox`` connection that the committing transaction's ``pg_notify`` wakes
within milliseconds; on SQLite a 0.2 s poll. The wait also ends when the next scheduled retry
or expired lease comes due, and at least every ``SAFETY_SECONDS``. After ``run_seconds`` the run
ends itself, so each run stays a readable unit (counts, artifacts, one audit entry), and emits
the Prefect event ``consentflow.propagate.loop-ended`` on which the ``propagate/continuous``
deployment's trigger starts the next loop (a schedule every few minutes is the safety net, and
a trigger on a Crashed run restarts a killed one).

**Slots.** At most ``loops`` runs loop at once: each holds a slot (``wakeup.acquire_slot``: a
PostgreSQL advisory lock, or a lock file beside the SQLite database), released when the run
ends or its process dies. A run that finds every slot taken (a scheduled safety-net run while a
loop is running) does one drain pass and completes: no Cancelled runs, no concurrency limit.
Only a run that held a slot emits ``loop-ended``, and it releases the slot first, so the run it
triggers finds the slot free. Several loops share the queue through the engine's claims.

**Failures are visible.** A run that dead-lettered anything, or whose attempts all failed, ends
Failed (a ``Failed`` state carrying the summary and a message naming the endpoints), logs the
message at ERROR in the run's logs, and its audit entry says ``failed``. Per endpoint, it emits
``consentflow.delivery.dead_lettered`` and ``consentflow.endpoint.failing`` (``delivery.events``:
counts only). The state's result is a ``PropagateFailed`` carrying the summary (a direct call
raises it). An exception inside the loop ends the run ``failed`` and re-raises.

**Counts.** A delivery run is per endpoint, not per purpose, so the summary's counts all have
purpose ``-`` and give totals per outcome; ``endpoints`` (artifact ``propagate-endpoints``, and
in ``--json`` and the audit entry) breaks them down per endpoint; ``held`` is the number held at
the run's end, not a sum over passes. ``loop`` says which slot the run held, how many passes it
made and how many wake-ups it had.

Parameters are top-level and typed (a flat form in the UI; ``runs.load_flow`` derives the same
model). The first step (``flows.common.checked``) checks them as ``runs.prepare_flow`` does,
including what the signature cannot (``check_parameters``: ``as_of`` only for a dry run; systems
that exist), and fails fast with one line and no audit entry. A dry run reports what is due and
held (``as_of`` may look ahead) and sends nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Failed, State
from pydantic import AfterValidator
from sqlalchemy.engine import Engine

from consentflow import db
from consentflow.delivery import engine as delivery
from consentflow.delivery import events, wakeup
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.timeutil import as_utc
from flows.common import END_HOOKS, DryRun, checked, finish, form, outcome_of, start

FLOW = "propagate"
#: The purpose column of the run's counts: a delivery run covers every purpose.
ALL_PURPOSES = "-"
#: The longest loop a run may be asked for, and the decorator's timeout beyond it (the last
#: pass may still be finishing batches already claimed when the loop's time is up).
MAX_RUN_SECONDS = 900
TIMEOUT_MARGIN_SECONDS = 300
#: Every pass may claim for at least this long, even at the end of the run (so a short run or a
#: one-pass run on a busy machine still delivers; the run may overrun by this much).
MIN_PASS_SECONDS = 5.0
#: A waiting loop looks at the outbox at least this often, whatever it was told.
SAFETY_SECONDS = 30.0
#: Outcomes that are a snapshot at the end of a pass, not events to add up across passes.
SNAPSHOTS = (delivery.HELD, delivery.DUE)
#: Outcomes that are an attempt sent (or tried) to an endpoint.
ATTEMPTS = (delivery.DELIVERED, delivery.RETRIED, delivery.DEAD, delivery.DISABLED)


@dataclass
class LoopStats:
    """What the loop did besides delivering: its slot (None: none free, one pass), passes and
    wake-ups (a commit's notification, or due work seen by the poll)."""

    slot: int | None = None
    passes: int = 0
    wakeups: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "passes": self.passes, "wakeups": self.wakeups}


@dataclass
class PropagateSummary(RunSummary):
    """The run's summary plus one row of counts per endpoint (``Report.table``) and the loop."""

    endpoints: list[dict[str, Any]] = field(default_factory=list)
    loop: LoopStats = field(default_factory=LoopStats)

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | {"endpoints": self.endpoints, "loop": self.loop.as_dict()}


class PropagateFailed(Exception):
    """The Failed state's result: why, and the run's summary (``.summary``). Calling the flow
    directly raises it; ``state.result(raise_on_failure=False)`` returns it."""

    def __init__(self, message: str, summary: PropagateSummary) -> None:
        super().__init__(message, summary)
        self.message = message
        self.summary = summary

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------------ the loop


def merge(total: delivery.Report, part: delivery.Report) -> None:
    """Add one pass's report to the run's: events add up; snapshots (held) are replaced."""
    for key in [k for k in total.counts if k[1] in SNAPSHOTS]:
        del total.counts[key]
    total.extend(part)


def handled(report: delivery.Report) -> int:
    return sum(n for (_, outcome), n in report.counts.items() if outcome not in SNAPSHOTS)


def wait_timeout(engine: Engine, names: list[str] | None, left: float) -> float:
    """How long the loop may wait for a wake-up: until the run ends, the next scheduled attempt
    or lease expiry, or ``SAFETY_SECONDS``, whichever comes first."""
    now = utcnow()
    with db.session_scope(engine, readonly=True) as session:
        upcoming = wakeup.next_due(session, now, names)
    until = (upcoming - now).total_seconds() if upcoming is not None else SAFETY_SECONDS
    return max(0.0, min(left, SAFETY_SECONDS, until))


def run_loop(
    engine: Engine,
    options: delivery.Options,
    *,
    run_id: str | None,
    run_seconds: float,
    stats: LoopStats,
    loop: bool = True,
    on_pass: Callable[[delivery.Report], None] | None = None,
    total: delivery.Report | None = None,
) -> delivery.Report:
    """Deliver what is due, wait for a wake-up, repeat until ``run_seconds`` have passed (one
    pass only when not ``loop``). The waiter is opened before the first pass, so a commit made
    while a pass runs wakes the next wait at once. ``on_pass`` sees each pass's report.

    The counts go into ``total`` (default: a new report) as each result is recorded, so a caller
    keeps the counts of a loop that an exception or a cancellation interrupted."""
    names = list(options.systems) if options.systems is not None else None
    deadline = time.monotonic() + run_seconds
    total = total if total is not None else delivery.Report()
    with wakeup.waiter(engine, names) if loop else nullcontext() as waiter:
        while True:
            left = deadline - time.monotonic()
            budget = max(left, MIN_PASS_SECONDS)
            part = delivery.Report()
            try:
                delivery.deliver_due(
                    engine,
                    options=replace(options, max_seconds=budget),
                    run_id=run_id,
                    report=part,
                )
            finally:
                merge(total, part)
            stats.passes += 1
            if on_pass is not None:
                on_pass(part)
            left = deadline - time.monotonic()
            if waiter is None or left <= 0:
                return total
            began = time.monotonic()
            woke = waiter.wait(wait_timeout(engine, names, left))
            stats.wakeups += woke
            if woke and not handled(part) and time.monotonic() - began < wakeup.POLL_INTERVAL:
                # woken at once after a pass that found nothing: do not spin
                time.sleep(min(wakeup.POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


# ----------------------------------------------------------------------------------- the flow


def check_parameters(values: dict[str, Any]) -> None:
    """The rule the signature cannot state (``runs.prepare_flow`` and ``checked`` call it)."""
    if values.get("as_of") is not None and not values.get("dry_run"):
        raise ValueError(
            "as_of: allowed only with dry_run: a real run sends what is due now "
            "(a later instant would send scheduled retries early)"
        )


def failure(report: delivery.Report) -> str | None:
    """Why the run failed (dead letters, or every attempt failed), or None."""
    dead = report.total(delivery.DEAD)
    attempts = sum(report.total(o) for o in ATTEMPTS)
    if dead:
        where = sorted({s for (s, o), n in report.counts.items() if o == delivery.DEAD and n})
        return f"{dead} deliveries dead-lettered (endpoints: {', '.join(where)})"
    if attempts and not report.total(delivery.DELIVERED):
        where = sorted({s for (s, o), n in report.counts.items() if o in ATTEMPTS and n})
        return f"all {attempts} delivery attempts failed (endpoints: {', '.join(where)})"
    return None


def fill(summary: PropagateSummary, report: delivery.Report) -> None:
    """The run's counts and endpoints from its report; the endpoints artifact."""
    for (_, outcome), n in sorted(report.counts.items()):
        summary.add(ALL_PURPOSES, outcome, n)
    summary.endpoints = report.table()
    create_table_artifact(
        key="propagate-endpoints",
        table=summary.endpoints or [{"endpoint": "-", "delivered": 0}],
        description="Webhook deliveries per endpoint in this run",
    )


def conclude(
    summary: PropagateSummary, report: delivery.Report, sent: set[tuple[str, str]]
) -> str | None:
    """``fill`` the summary and emit the failure events not yet emitted after a pass (``sent``);
    the failure message, if it failed."""
    fill(summary, report)
    events.emit_failures(report.by_system(), sent)
    return failure(report)


Systems = Annotated[
    list[str] | None,
    form("Systems", "Only these systems, by name (empty: every system).", max_length=100),
]
AsOfDryRun = Annotated[
    datetime | None,
    AfterValidator(as_utc),
    form(
        "As of (dry run only)",
        "Dry run only: report what would be due at this instant (UTC if no zone is given). "
        "A real run always uses the current time.",
    ),
]
BatchSize = Annotated[int, form("Batch size", "Deliveries claimed at once.", ge=1, le=1000)]
PerEndpoint = Annotated[
    int, form("Requests per endpoint", "Requests in flight per endpoint.", ge=1, le=64)
]
RunSeconds = Annotated[
    float,
    form(
        "Run for (seconds)",
        "The loop ends itself after this long and the next run takes over (0: deliver what "
        "is due once and end, as from the terminal).",
        ge=0,
        le=MAX_RUN_SECONDS,
    ),
]
Loops = Annotated[
    int,
    form(
        "Loops at once",
        "At most this many runs loop at once; a run beyond them delivers what is due once "
        "and completes.",
        ge=1,
        le=32,
    ),
]


@flow(name=FLOW, timeout_seconds=MAX_RUN_SECONDS + TIMEOUT_MARGIN_SECONDS, **END_HOOKS)
def propagate(
    dry_run: DryRun = False,
    as_of: AsOfDryRun = None,
    systems: Systems = None,
    batch_size: BatchSize = 50,
    per_endpoint: PerEndpoint = 4,
    run_seconds: RunSeconds = 300,
    loops: Loops = 1,
) -> RunSummary | State[Any]:
    """Deliver due webhooks as they become due for ``run_seconds``; held and dead-lettered ones
    are counted, never dropped."""
    parameters = checked(
        FLOW,
        {
            "dry_run": dry_run,
            "as_of": as_of,
            "systems": systems,
            "batch_size": batch_size,
            "per_endpoint": per_endpoint,
            "run_seconds": run_seconds,
            "loops": loops,
        },
    )
    base = start(FLOW, parameters, dry_run)
    summary = PropagateSummary(**{f.name: getattr(base, f.name) for f in fields(base)})
    if dry_run:
        with db.session_scope(readonly=True) as session:
            fill(summary, delivery.preview(session, now=as_utc(as_of), names=systems))
        return finish(summary)
    options = delivery.Options(batch_size=batch_size, per_endpoint=per_endpoint, systems=systems)
    return deliver(summary, options, run_seconds=run_seconds, loops=loops)


def deliver(
    summary: PropagateSummary, options: delivery.Options, *, run_seconds: float, loops: int
) -> RunSummary | State[Any]:
    """The real run: take a slot (or not), loop, record; a Failed state if deliveries failed."""
    engine = db.get_engine()
    slot = wakeup.acquire_slot(engine, loops) if run_seconds > 0 else None
    summary.loop.slot = slot.index if slot is not None else None
    report = delivery.Report()
    sent: set[tuple[str, str]] = set()  # failure events emitted so far, one per endpoint and kind
    try:
        with slot if slot is not None else nullcontext():
            run_loop(
                engine,
                options,
                run_id=summary.run_id,
                run_seconds=run_seconds,
                stats=summary.loop,
                loop=slot is not None,
                on_pass=lambda part: events.emit_failures(part.by_system(), sent),
                total=report,
            )
    except BaseException as exc:
        outcome = outcome_of(exc)
        summary.reason = f"interrupted by {type(exc).__name__}"
        fill(summary, report)  # what was recorded before the interruption
        finish(summary, outcome)
        _loop_ended(summary, outcome)
        raise
    message = conclude(summary, report, sent)
    summary.reason = message
    finish(summary, "failed" if message else "completed")
    _loop_ended(summary, "failed" if message else "completed")
    if message is None:
        return summary
    get_run_logger().error("propagate failed: %s", message)
    return Failed(message=f"propagate: {message}", data=PropagateFailed(message, summary))


def _loop_ended(summary: PropagateSummary, outcome: str) -> None:
    """After the slot is released: tell the deployment's trigger to start the next loop."""
    if summary.loop.slot is None:
        return  # a one-pass run ends no loop; emitting would chain runs forever
    events.loop_ended({"slot": summary.loop.slot, "outcome": outcome, **summary.loop.as_dict()})

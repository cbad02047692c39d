"""The Prefect side shared by every flow: the run's identity and its summary artifact, the batch
task every lifecycle flow runs its sweeps through, and an email flow's mailer.

A lifecycle flow never restates a sweep's signature: every sweep has the shape
``sweep(ctx, size, cursor) -> Batch`` (``consentflow.sweeps``), so one generic Prefect task,
``sweep_batch``, runs one batch of any sweep, and ``run_batches`` drains a sweep with one task run
per batch, named after the sweep (``remind_batch`` -> ``remind-batch``). Each flow module keeps its
own copy of the task with its retry delays (``batch_task``), which tests may swap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any, Protocol

from prefect import Task, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field, field_validator, model_validator

from consentflow import db, mail, sweeps
from consentflow.delivery import events
from consentflow.models import utcnow
from consentflow.runs import REQUESTED_BY, RunSummary, record_run
from consentflow.sweeps import Batch, Counts, Sweep, SweepContext
from consentflow.timeutil import as_utc

#: What every batch task passes to ``@task`` besides its name and ``retry_delay_seconds``: two
#: retries, only after a transient failure (the database or the mail server hiccupped), and no
#: result caching, since each call does new work.
BATCH_TASK: dict[str, Any] = {
    "retries": 2,
    "retry_condition_fn": sweeps.retry_transient,
    "cache_policy": NO_CACHE,
}


class LifecycleParams(BaseModel):
    """The parameters every lifecycle flow takes (each flow adds its own batch size and more).

    ``as_of`` may lie in the future only for a dry run: previewing what would be due by then is
    useful, but nothing may expire, lapse or be invalidated before its time.
    """

    as_of: datetime | None = Field(
        default=None,
        description="Judge what is due as of this instant (default: now; UTC if no zone is "
        "given). A future instant is allowed only for a dry run.",
    )
    dry_run: bool = Field(default=False, description="Report what would change; change nothing.")
    limit: int | None = Field(default=None, ge=1, description="Stop after this many items.")
    purposes: list[str] | None = Field(
        default=None, description="Only these purposes (keys); default: all."
    )

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @model_validator(mode="after")
    def _not_ahead_of_time(self) -> LifecycleParams:
        if self.as_of is not None and not self.dry_run and self.as_of > utcnow():
            raise ValueError("as_of is in the future: only a dry run may look ahead")
        return self


def start(flow: str, parameters: dict[str, object], dry_run: bool) -> RunSummary:
    """A summary stamped with this flow run's id and deployment (None outside a deployment)."""
    events.install()  # commits that enqueue webhooks (expiries, invalidations) wake propagate
    run_id = flow_run.id
    return RunSummary(
        flow=flow,
        parameters=parameters,
        dry_run=dry_run,
        run_id=str(run_id) if run_id else None,
        deployment=f"{flow_run.flow_name}/{deployment.name}" if deployment.name else None,
        requested_by=REQUESTED_BY.get(),
    )


@contextmanager
def recorded_run(flow: str, parameters: dict[str, object], dry_run: bool) -> Iterator[RunSummary]:
    """``start`` a run's summary for the block to fill, and ``finish`` it when the block ends:
    ``completed``, or ``failed`` (then re-raised) if anything in it raised."""
    summary = start(flow, parameters, dry_run)
    try:
        yield summary
    except BaseException:
        finish(summary, "failed")
        raise
    finish(summary)


def finish(summary: RunSummary, outcome: str = "completed") -> RunSummary:
    """Audit the run and publish its table of counts in the Prefect UI."""
    with db.session_scope() as session:
        record_run(session, summary, outcome)
    create_table_artifact(
        key=f"{summary.flow}-summary",
        table=summary.rows() or [{"purpose": "-", "outcome": "nothing to do", "count": 0}],
        description=(
            f"{summary.flow}{' (dry run)' if summary.dry_run else ''}: "
            f"{summary.total()} item(s), {outcome}"
        ),
    )
    return summary


class Batched(Protocol):
    """What ``run_batches`` reads of a flow's parameters."""

    batch_size: int
    limit: int | None


def sweep_context(
    summary: RunSummary,
    params: LifecycleParams,
    as_of: datetime,
    mailer: mail.Mailer | None = None,
    **policy: Any,
) -> SweepContext:
    """The context every batch of this run shares: ``as_of``, the run's id, dry run and purposes
    from ``params``, the mailer, and the email sweeps' ``policy`` (e.g. ``stages=...``)."""
    return SweepContext(
        as_of=as_of,
        run_id=summary.run_id,
        dry_run=params.dry_run,
        purposes=None if params.purposes is None else tuple(params.purposes),
        mailer=mailer,
        **policy,
    )


@task(name="sweep-batch", retry_delay_seconds=[5, 30], **BATCH_TASK)
def sweep_batch(sweep: Sweep, ctx: SweepContext, size: int, cursor: int) -> Batch:
    """One batch of any sweep, as one Prefect task run (``run_batches`` names it after the
    sweep)."""
    return sweep(ctx, size, cursor)


def task_name(sweep: Sweep) -> str:
    """A sweep's task name in the Prefect UI: ``remind_batch`` -> ``remind-batch``."""
    return getattr(sweep, "__name__", "sweep-batch").replace("_", "-")


def run_batches(
    batch_task: Task[..., Batch], sweep: Sweep, ctx: SweepContext, params: Batched
) -> Counts:
    """Run ``sweep`` batch after batch (``params.batch_size`` items each), one ``batch_task`` run
    per batch named after the sweep, until nothing is left or ``params.limit`` items were seen;
    the counts of all its batches."""
    named = batch_task.with_options(name=task_name(sweep))
    total: Counts = Counter()
    for batch in sweeps.drain(
        lambda size, cursor: named(sweep, ctx, size, cursor),
        batch_size=params.batch_size,
        limit=params.limit,
    ):
        total.update(batch.counts)
    return total


@task(name="release-stale-claims", retry_delay_seconds=[5, 30], **BATCH_TASK)
def release_stale_claims(ctx: SweepContext, kinds: list[mail.Kind]) -> Batch:
    return sweeps.release_stale_claims(ctx, kinds)


@contextmanager
def mailing(summary: RunSummary, kind: mail.Kind) -> Iterator[mail.Mailer | None]:
    """An email flow's mailer: one pool of SMTP connections for the whole run, closed when the
    block ends (None in a dry run, which sends nothing). First, the claims on ``kind`` emails
    that a crashed run left behind are released (see ``sweeps.release_stale_claims``)."""
    with ExitStack() as stack:
        mailer = None if summary.dry_run else stack.enter_context(mail.Mailer())
        ctx = SweepContext(as_of=utcnow(), run_id=summary.run_id, dry_run=summary.dry_run)
        summary.counts.update(release_stale_claims(ctx, [kind]).counts)
        yield mailer

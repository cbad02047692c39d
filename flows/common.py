"""The Prefect side shared by every flow: the parameters' form fields, the run's identity, its
end entry and summary artifact, the batch task every lifecycle flow runs its sweeps through, and
an email flow's mailer.

Parameters are top-level and typed, each ``Annotated[T, form(title, description, ...)]``, so the
Prefect UI shows a flat, titled, described form and ``consentflow.runs.load_flow`` derives the
same model (unknown fields refused). A flow's first step is ``checked(FLOW, values)``: the same
checks as ``runs.prepare_flow`` for a run started from the UI or a schedule, failing fast with one
clear message before anything is recorded (no audit entry for a run that never began).

A run ends with exactly one end entry, its outcome agreeing with Prefect's final state:
``completed``; ``failed`` (an exception in the flow: Prefect's Failed); ``cancelled`` (Prefect
cancelled it: the runner's SIGTERM with the cancel intent); ``crashed`` (any other interruption:
SIGTERM, KeyboardInterrupt, SystemExit, which Prefect marks Crashed). ``recorded_run`` writes it
from inside the run; the ``END_HOOKS`` (``on_crashed`` / ``on_cancellation``) write it from the
process that still can (the worker's runner after a hard kill) when the run could not, never a
second time (``runs.record_ended``).

A lifecycle flow never restates a sweep's signature: every sweep has the shape
``sweep(ctx, size, cursor) -> Batch`` (``consentflow.sweeps``), so one generic Prefect task,
``sweep_batch``, runs one batch of any sweep, and ``run_batches`` drains a sweep with one task run
per batch, named after the sweep (``remind_batch`` -> ``remind-batch``). Each flow module keeps its
own copy of the task with its retry delays (``batch_task``), which tests may swap.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Annotated, Any

from prefect import Task, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.runtime import deployment, flow_run
from pydantic import AfterValidator, Field, StringConstraints
from pydantic.fields import FieldInfo

from consentflow import db, mail, runs, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary, record_run
from consentflow.sweeps import Batch, Counts, Sweep, SweepContext
from consentflow.timeutil import as_utc

logger = logging.getLogger("consentflow.flows")

#: What every batch task passes to ``@task`` besides its name and ``retry_delay_seconds``: two
#: retries, only after a transient failure (the database or the mail server hiccupped), and no
#: result caching, since each call does new work.
BATCH_TASK: dict[str, Any] = {
    "retries": 2,
    "retry_condition_fn": sweeps.retry_transient,
    "cache_policy": NO_CACHE,
}


def form(title: str, description: str, **constraints: Any) -> FieldInfo:
    """A flow parameter's field as the Prefect UI shows it. Prefect's ``parameter_schema``
    replaces a field's own title (with the parameter's name) and description (with the
    docstring's), but keeps ``json_schema_extra``: so both go there as well."""
    extra: dict[str, Any] = {"title": title, "description": description}
    field: FieldInfo = Field(
        title=title, description=description, json_schema_extra=extra, **constraints
    )
    return field


DryRun = Annotated[bool, form("Dry run", "Report what would change; change nothing.")]
AsOf = Annotated[
    datetime | None,
    AfterValidator(as_utc),
    form(
        "As of",
        "Judge what is due as of this instant (empty: now; UTC if no zone is given). "
        "A future instant is allowed only for a dry run.",
    ),
]
Limit = Annotated[int | None, form("Limit", "Stop after this many items (empty: all).", ge=1)]
PurposeKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Purposes = Annotated[
    list[PurposeKey] | None,
    form("Purposes", "Only these purposes, by key (empty: every purpose).", max_length=100),
]


def batch_field(what: str, maximum: int) -> FieldInfo:
    """The form field of a flow's batch size: ``what`` per batch, one task run each."""
    return form("Batch size", f"{what} per batch (one task run each).", ge=1, le=maximum)


def checked(flow: str, values: dict[str, Any]) -> dict[str, Any]:
    """A flow's first step: its parameters checked as ``runs.prepare_flow`` checks them (a run
    started from the UI or a schedule never went through it), JSON-ready. Raises
    ``InvalidInput`` naming the field, before anything is recorded."""
    _, parameters = runs.prepare_flow(flow, values)
    return parameters


def start(flow: str, parameters: dict[str, object], dry_run: bool) -> RunSummary:
    """A summary stamped with this flow run's id, deployment (None outside a deployment) and
    who asked for it (its ``requested-by:`` tag; None for scheduled and triggered runs)."""
    run_id = flow_run.id
    return RunSummary(
        flow=flow,
        parameters=parameters,
        dry_run=dry_run,
        run_id=str(run_id) if run_id else None,
        deployment=f"{flow_run.flow_name}/{deployment.name}" if deployment.name else None,
        requested_by=runs.requester(flow_run.tags or []) if run_id else None,
    )


def outcome_of(exc: BaseException) -> str:
    """The end entry's outcome for a run interrupted by ``exc``, as Prefect's final state will
    name it: a cancellation asked of the runner is Cancelled; an exception Failed; any other
    interruption (a SIGTERM that was not a cancellation, KeyboardInterrupt, SystemExit) Crashed."""
    if isinstance(exc, TerminationSignal):
        return "cancelled" if _cancel_intent() else "crashed"
    if isinstance(exc, Exception):
        return "failed"
    return "crashed"


def _cancel_intent() -> bool:
    """Whether the runner asked this process to stop because the run was cancelled (it says so
    on its control channel before sending SIGTERM)."""
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:  # pragma: no cover - a Prefect without the control channel
        return False
    return get_intent() == "cancel"


@contextmanager
def recorded_run(flow: str, parameters: dict[str, object], dry_run: bool) -> Iterator[RunSummary]:
    """``start`` a run's summary for the block to fill, and ``finish`` it when the block ends:
    ``completed``, or (then re-raised) ``failed``, ``cancelled`` or ``crashed`` as
    ``outcome_of`` names what interrupted it, with the counts so far."""
    summary = start(flow, parameters, dry_run)
    try:
        yield summary
    except BaseException as exc:
        outcome = outcome_of(exc)
        if outcome != "failed":
            summary.reason = f"interrupted by {type(exc).__name__}"
        finish(summary, outcome)
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


def _end_hook(outcome: str) -> Any:
    def record_end(flow: Any, flow_run: Any, state: Any) -> None:
        """Record the run's end (``outcome``) if it could not itself (killed, or stopped
        before its body); never a second end entry."""
        try:
            with db.session_scope() as session:
                runs.record_ended(session, str(flow_run.id), flow.name, outcome, state.message)
        except Exception as exc:  # a hook must not raise; the operator-alerts flow retries
            logger.error("could not record run %s as %s: %s", flow_run.id, outcome, exc)

    record_end.__name__ = f"record_{outcome}"
    return record_end


#: The hooks every flow decorator takes (``@flow(..., **END_HOOKS)``).
END_HOOKS: dict[str, Any] = {
    "on_crashed": [_end_hook("crashed")],
    "on_cancellation": [_end_hook("cancelled")],
}


def sweep_context(
    summary: RunSummary,
    as_of: datetime,
    purposes: list[str] | None,
    mailer: mail.Mailer | None = None,
    **policy: Any,
) -> SweepContext:
    """The context every batch of this run shares: ``as_of``, the run's id, dry run, the
    ``purposes`` (None: all), the mailer, and the email sweeps' ``policy`` (``stages=...``)."""
    return SweepContext(
        as_of=as_of,
        run_id=summary.run_id,
        dry_run=summary.dry_run,
        purposes=None if purposes is None else tuple(purposes),
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
    batch_task: Task[..., Batch], sweep: Sweep, ctx: SweepContext, size: int, limit: int | None
) -> Counts:
    """Run ``sweep`` batch after batch (``size`` items each), one ``batch_task`` run per batch
    named after the sweep, until nothing is left or ``limit`` items were seen; the counts of
    all its batches."""
    named = batch_task.with_options(name=task_name(sweep))
    total: Counts = Counter()
    for batch in sweeps.drain(
        lambda n, cursor: named(sweep, ctx, n, cursor), batch_size=size, limit=limit
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

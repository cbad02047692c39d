"""retention-sweep: what the law no longer requires leaves, as of an instant (default now).

Evidence, delivery attempt logs, email send records, closed requests and ended web sessions
older than their ``CONSENTFLOW_RETENTION_*_DAYS`` go (``consentflow.sweeps.retention`` says
exactly which rows); the audit chain, the consent history and the pseudonymous references stay.
The run is refused (failed, nothing changed) when ``audit verify`` finds anything. One task per
batch of each row kind; each batch commits on its own, so a crash loses at most the batch in
flight and a re-run finishes the rest. A real run ends with one task (``record-sweep``) and one
transaction that clears the evidence past its cut-off, destroys the data keys of erased subjects
that nothing waits for any more and appends the run's ``retention.swept`` audit entry (counts
per kind, the cut-offs, ``evidence_before``): evidence never goes without the entry that
excuses it. A dry run counts every kind in one task (``preview-retention``) and writes nothing
but its end entry.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, task

from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.sweeps import Batch, SweepContext
from consentflow.sweeps import retention as sweep
from flows.common import (
    BATCH_TASK,
    END_HOOKS,
    AsOf,
    DryRun,
    batch_field,
    checked,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "retention-sweep"

#: Deleting a year of rows of a large ledger takes minutes; past two hours something is stuck.
TIMEOUT_SECONDS = 2 * 3600

#: One Prefect task run per batch, retried after 5 and 30 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[5, 30])


@task(name="require-intact", retry_delay_seconds=[5, 30], **BATCH_TASK)
def require_intact(ctx: SweepContext) -> None:
    """Refuse the run when ``audit verify`` finds anything (``Conflict``: not retried)."""
    sweep.require_intact(ctx)


@task(name="preview-retention", retry_delay_seconds=[5, 30], **BATCH_TASK)
def preview_retention(ctx: SweepContext) -> Batch:
    """A dry run's counts, every kind at once (see ``sweeps.retention.preview_retention``)."""
    return sweep.preview_retention(ctx)


@task(name="record-sweep", retry_delay_seconds=[5, 30], **BATCH_TASK)
def record_sweep(ctx: SweepContext, counts: dict[tuple[str, str], int]) -> Batch:
    """Clear the evidence, shred the settled data keys, append the ``retention.swept`` entry."""
    return sweep.record_sweep(ctx, counts)


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def retention_sweep(
    dry_run: DryRun = False,
    as_of: AsOf = None,
    batch_size: Annotated[int, batch_field("Rows", 50_000)] = 5000,
) -> RunSummary:
    """Prune what is past its retention as of ``as_of``, kind by kind, in batches."""
    parameters = checked(FLOW, {"dry_run": dry_run, "as_of": as_of, "batch_size": batch_size})
    as_of = as_of or utcnow()
    parameters["as_of"] = as_of.isoformat()
    with recorded_run(FLOW, parameters, dry_run) as summary:
        ctx = sweep_context(summary, as_of, None)
        require_intact(ctx)
        if dry_run:
            summary.counts.update(preview_retention(ctx).counts)
        else:
            for batches in sweep.BATCHES:
                summary.counts.update(run_batches(batch_task, batches, ctx, batch_size, None))
            summary.counts.update(record_sweep(ctx, dict(summary.counts)).counts)
    return summary

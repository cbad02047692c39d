"""expiry-sweep: given consents whose validity ended (as of an instant, default now) expire.

Each expiry is recorded as effective at the validity end and recorded at the sweep's time, and
enqueues webhook deliveries to the systems subscribed to its purpose (the ledger's outbox). One
task per batch; each batch commits on its own, so a crash loses at most the batch in flight and
a re-run finishes the rest. Concurrent sweeps on PostgreSQL share the work (``SKIP LOCKED``).
A dry run previews every batch at once in one task (``preview-expiry``).
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, task

from consentflow import sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from flows.common import (
    BATCH_TASK,
    END_HOOKS,
    AsOf,
    DryRun,
    Limit,
    Purposes,
    batch_field,
    checked,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "expiry-sweep"

#: A sweep of a few million consents takes minutes; past two hours something is stuck.
TIMEOUT_SECONDS = 2 * 3600

#: One Prefect task run per batch, retried after 5 and 30 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[5, 30])


@task(name="preview-expiry", retry_delay_seconds=[5, 30], **BATCH_TASK)
def preview_expiry(ctx: sweeps.SweepContext, limit: int | None) -> sweeps.Batch:
    """A dry run's preview, which has a shape of its own (see ``sweeps.preview_expiry``)."""
    return sweeps.preview_expiry(ctx, limit)


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def expiry_sweep(
    dry_run: DryRun = False,
    as_of: AsOf = None,
    batch_size: Annotated[int, batch_field("Consents", 50_000)] = 5000,
    limit: Limit = None,
    purposes: Purposes = None,
) -> RunSummary:
    """Expire every consent whose validity ended by ``as_of``, in batches."""
    parameters = checked(
        FLOW,
        {
            "dry_run": dry_run,
            "as_of": as_of,
            "batch_size": batch_size,
            "limit": limit,
            "purposes": purposes,
        },
    )
    as_of = as_of or utcnow()
    parameters["as_of"] = as_of.isoformat()
    with recorded_run(FLOW, parameters, dry_run) as summary:
        ctx = sweep_context(summary, as_of, purposes)
        if dry_run:
            summary.counts.update(preview_expiry(ctx, limit).counts)
        else:
            summary.counts.update(
                run_batches(batch_task, sweeps.expire_batch, ctx, batch_size, limit)
            )
    return summary

"""expiry-sweep: given consents whose validity ended (as of an instant, default now) expire.

Each expiry is recorded as effective at the validity end and recorded at the sweep's time, and
enqueues webhook deliveries to the systems subscribed to its purpose (the ledger's outbox). One
task per batch; each batch commits on its own, so a crash loses at most the batch in flight and
a re-run finishes the rest. Concurrent sweeps on PostgreSQL share the work (``SKIP LOCKED``).
A dry run previews every batch at once in one task (``preview-expiry``).
"""

from __future__ import annotations

from prefect import flow, task
from pydantic import Field

from consentflow import sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from flows.common import (
    BATCH_TASK,
    LifecycleParams,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "expiry-sweep"

#: One Prefect task run per batch, retried after 5 and 30 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[5, 30])


class Params(LifecycleParams):
    """Parameters of an expiry sweep (a form in the Prefect UI)."""

    batch_size: int = Field(default=5000, ge=1, le=50_000, description="Consents per batch.")


@task(name="preview-expiry", retry_delay_seconds=[5, 30], **BATCH_TASK)
def preview_expiry(ctx: sweeps.SweepContext, limit: int | None) -> sweeps.Batch:
    """A dry run's preview, which has a shape of its own (see ``sweeps.preview_expiry``)."""
    return sweeps.preview_expiry(ctx, limit)


@flow(name=FLOW)
def expiry_sweep(params: Params = Params()) -> RunSummary:
    """Expire every consent whose validity ended by ``as_of``, in batches."""
    as_of = params.as_of or utcnow()
    parameters = {**params.model_dump(mode="json"), "as_of": as_of.isoformat()}
    with recorded_run(FLOW, parameters, params.dry_run) as summary:
        ctx = sweep_context(summary, params, as_of)
        if params.dry_run:
            summary.counts.update(preview_expiry(ctx, params.limit).counts)
        else:
            summary.counts.update(run_batches(batch_task, sweeps.expire_batch, ctx, params))
    return summary

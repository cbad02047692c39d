"""expiry-sweep: given consents whose validity ended (as of an instant, default now) expire.

Each expiry is recorded as effective at the validity end and recorded at the sweep's time, and
enqueues webhook deliveries to the systems subscribed to its purpose (the ledger's outbox). One
task per batch; each batch commits on its own, so a crash loses at most the batch in flight and
a re-run finishes the rest. Concurrent sweeps on PostgreSQL share the work (``SKIP LOCKED``).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from pydantic import Field

from consentflow import sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from flows.common import BATCH_TASK, LifecycleParams, recorded_run

FLOW = "expiry-sweep"


class Params(LifecycleParams):
    """Parameters of an expiry sweep (a form in the Prefect UI)."""

    batch_size: int = Field(default=5000, ge=1, le=50_000, description="Consents per batch.")


@task(name="expire-batch", retry_delay_seconds=[5, 30], **BATCH_TASK)
def expire_batch(
    as_of: datetime, size: int, purposes: list[str] | None, run_id: str | None
) -> sweeps.Batch:
    return sweeps.expire_batch(as_of=as_of, size=size, purposes_=purposes, run_id=run_id)


@task(name="preview-expiry", retry_delay_seconds=[5, 30], **BATCH_TASK)
def preview_expiry(as_of: datetime, limit: int | None, purposes: list[str] | None) -> sweeps.Batch:
    return sweeps.preview_expiry(as_of=as_of, limit=limit, purposes_=purposes)


@flow(name=FLOW)
def expiry_sweep(params: Params = Params()) -> RunSummary:
    """Expire every consent whose validity ended by ``as_of``, in batches."""
    as_of = params.as_of or utcnow()
    parameters = {**params.model_dump(mode="json"), "as_of": as_of.isoformat()}
    with recorded_run(FLOW, parameters, params.dry_run) as summary:
        if params.dry_run:
            summary.counts.update(preview_expiry(as_of, params.limit, params.purposes).counts)
        else:
            for batch in sweeps.drain(
                lambda size, _cursor: expire_batch(as_of, size, params.purposes, summary.run_id),
                batch_size=params.batch_size,
                limit=params.limit,
            ):
                summary.counts.update(batch.counts)
    return summary

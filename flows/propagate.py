"""Propagate withdrawals: deliver the pending webhooks to every downstream system.

Deployed with a frequent schedule (the safety net) and a trigger on the
``consentflow.consent.withdrawn`` event (near real time); see ``prefect.yaml``. Several runs, on
one machine or many, may overlap safely: deliveries are claimed with a lease. Each run writes an
audit entry and two artifacts: the summary of counts, and a table per endpoint (delivered,
retried, dead-lettered, disabled by a 410, held).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from consentflow import db
from consentflow.delivery import engine
from consentflow.runs import RunSummary
from flows.common import finish, start


class Params(BaseModel):
    """Parameters of one propagation run."""

    batch_size: int = Field(50, ge=1, le=1000, description="Deliveries claimed per batch.")
    per_endpoint: int = Field(4, ge=1, le=64, description="Requests in flight per endpoint.")
    max_seconds: float | None = Field(
        240, gt=0, description="Stop claiming new batches after this long (None: drain fully)."
    )
    limit: int | None = Field(None, ge=1, description="Stop after this many deliveries.")
    systems: list[str] | None = Field(None, description="Only these systems (default: all).")
    as_of: datetime | None = Field(None, description="Treat this instant as now (testing).")
    dry_run: bool = Field(False, description="Report what is due and held; send nothing.")


@task(name="deliver-due", cache_policy=NO_CACHE)
def deliver(params: Params, run_id: str | None) -> engine.Report:
    options = engine.Options(
        batch_size=params.batch_size,
        per_endpoint=params.per_endpoint,
        max_seconds=params.max_seconds,
        limit=params.limit,
        systems=params.systems,
    )
    if params.dry_run:
        with db.session_scope() as session:
            return engine.preview(session, now=params.as_of, names=params.systems)
    return engine.deliver_due(options=options, now=params.as_of, run_id=run_id)


@flow(name="propagate", log_prints=False)
def propagate(params: Params | None = None) -> RunSummary:
    """Deliver every due webhook; held and dead-lettered ones are counted, never dropped."""
    params = params or Params()
    summary = start("propagate", params.model_dump(mode="json"), params.dry_run)
    try:
        report = deliver(params, summary.run_id)
    except BaseException:
        finish(summary, "failed")
        raise
    for (system, outcome), n in sorted(report.counts.items()):
        summary.add(system, outcome, n)
    create_table_artifact(
        key="propagate-endpoints",
        table=report.table() or [{"endpoint": "-", "delivered": 0}],
        description="Webhook deliveries per endpoint in this run",
    )
    return finish(summary)

"""Propagate withdrawals: deliver the pending webhooks to every downstream system.

Deployed with a frequent schedule (the safety net) and a trigger on the
``consentflow.consent.withdrawn`` event (near real time); see ``prefect.yaml``. Several runs, on
one machine or many, may overlap safely: deliveries are claimed with a lease. Each run writes an
audit entry and two artifacts.

A delivery run is per endpoint, not per purpose, so the run's counts (the ``propagate-summary``
artifact, ``counts`` in ``--json`` and in the audit entry) all have purpose ``-`` (not a purpose:
every purpose) and give the totals per outcome; the breakdown per endpoint (delivered, retried,
dead-lettered, disabled by a 410, held, lease lost, due) is the ``propagate-endpoints`` artifact
and ``endpoints`` in ``--json`` and in the audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator, model_validator

from consentflow import db
from consentflow.delivery import engine
from consentflow.runs import RunSummary
from consentflow.timeutil import as_utc
from flows.common import finish, start

#: The purpose column of the run's counts: a delivery run covers every purpose.
ALL_PURPOSES = "-"


class Params(BaseModel):
    """Parameters of one propagation run."""

    batch_size: int = Field(50, ge=1, le=1000, description="Deliveries claimed per batch.")
    per_endpoint: int = Field(4, ge=1, le=64, description="Requests in flight per endpoint.")
    max_seconds: float | None = Field(
        240, gt=0, description="Stop claiming new batches after this long (None: drain fully)."
    )
    limit: int | None = Field(None, ge=1, description="Stop after this many deliveries.")
    systems: list[str] | None = Field(None, description="Only these systems (default: all).")
    as_of: datetime | None = Field(
        None,
        description="Dry run only: report what would be due at this instant (UTC if no zone is "
        "given). A real run always uses the current time.",
    )
    dry_run: bool = Field(False, description="Report what is due and held; send nothing.")

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @model_validator(mode="after")
    def _as_of_only_for_a_dry_run(self) -> Params:
        if self.as_of is not None and not self.dry_run:
            raise ValueError(
                "as_of is allowed only with dry_run: a real run sends what is due now "
                "(a later instant would send scheduled retries early)"
            )
        return self


@dataclass
class PropagateSummary(RunSummary):
    """The run's summary plus one row of counts per endpoint (``Report.table``)."""

    endpoints: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | {"endpoints": self.endpoints}


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
    return engine.deliver_due(options=options, run_id=run_id)


@flow(name="propagate", log_prints=False)
def propagate(params: Params | None = None) -> RunSummary:
    """Deliver every due webhook; held and dead-lettered ones are counted, never dropped."""
    params = params or Params()
    base = start("propagate", params.model_dump(mode="json"), params.dry_run)
    summary = PropagateSummary(**{f.name: getattr(base, f.name) for f in fields(base)})
    try:
        report = deliver(params, summary.run_id)
    except BaseException:
        finish(summary, "failed")
        raise
    for (_, outcome), n in sorted(report.counts.items()):
        summary.add(ALL_PURPOSES, outcome, n)
    summary.endpoints = report.table()
    create_table_artifact(
        key="propagate-endpoints",
        table=summary.endpoints or [{"endpoint": "-", "delivered": 0}],
        description="Webhook deliveries per endpoint in this run",
    )
    return finish(summary)

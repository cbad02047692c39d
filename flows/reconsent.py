"""reconsent: after a material revision of a purpose, ask everyone whose consent rests on an
older version to confirm, with a deadline; at the deadline, invalidate what was not confirmed.

Three steps, each in batches: (1) retry the emails an earlier run could not send; (2) open one
re-consent request per such consent (never a second while one is open, never twice for the same
material version) and email it with a grant link; (3) at the deadline, invalidate the consents
still on the old version (through the ledger, so downstream systems hear of it like a
withdrawal) and lapse the request. Renewing or granting on the new version answers the request.
Editorial revisions ask nobody.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.settings import get_settings
from flows.common import (
    LifecycleParams,
    mailing,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "reconsent"

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])

#: The steps, in order. Earlier runs' unsent emails are retried first, so that one deferred in
#: this run waits for the next run (a greylisting server wants a pause).
STEPS = (
    sweeps.reconsent_email_batch,
    sweeps.reconsent_open_batch,
    sweeps.reconsent_deadline_batch,
)


class Params(LifecycleParams):
    """Parameters of a re-consent run (a form in the Prefect UI)."""

    batch_size: int = Field(default=500, ge=1, le=10_000, description="Items per batch.")
    deadline_days: int | None = Field(
        default=None,
        ge=1,
        description="Days to confirm (default: CONSENTFLOW_RECONSENT_DEADLINE_DAYS, 30).",
    )


@flow(name=FLOW)
def reconsent(params: Params = Params()) -> RunSummary:
    """Ask for re-consent after material revisions, and enforce the deadlines that passed."""
    as_of = params.as_of or utcnow()
    deadline_days = params.deadline_days or get_settings().reconsent_deadline_days
    parameters = {
        **params.model_dump(mode="json"),
        "as_of": as_of.isoformat(),
        "deadline_days": deadline_days,
    }
    with (
        recorded_run(FLOW, parameters, params.dry_run) as summary,
        mailing(summary, mail.Kind.RECONSENT_REQUEST) as mailer,
    ):
        ctx = sweep_context(summary, params, as_of, mailer, reconsent_deadline_days=deadline_days)
        for step in STEPS:
            summary.counts.update(run_batches(batch_task, step, ctx, params))
    return summary

"""collection-followups: open collection requests unanswered after N days get a follow-up email,
up to a maximum; after the last one (and N more days) the request lapses.

A lapsed request is closed and audited, and counted for compliance; the consent stays
``requested`` (nobody answered, so nothing was given or refused). Emails are claimed before
sending, exactly like reminders (see ``consentflow.sweeps``).
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

FLOW = "collection-followups"

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])


class Params(LifecycleParams):
    """Parameters of a follow-up run (a form in the Prefect UI)."""

    batch_size: int = Field(default=500, ge=1, le=10_000, description="Requests per batch.")
    after_days: int | None = Field(
        default=None,
        ge=0,
        description="Days without an answer before each follow-up and before lapsing "
        "(default: CONSENTFLOW_FOLLOWUP_AFTER_DAYS, 7).",
    )
    max_followups: int | None = Field(
        default=None,
        ge=0,
        description="Follow-ups at most (default: CONSENTFLOW_FOLLOWUP_MAX, 2).",
    )


@flow(name=FLOW)
def collection_followups(params: Params = Params()) -> RunSummary:
    """Follow up or lapse the collection requests due as of ``as_of``, in batches."""
    settings = get_settings()
    as_of = params.as_of or utcnow()
    after_days = settings.followup_after_days if params.after_days is None else params.after_days
    max_followups = settings.followup_max if params.max_followups is None else params.max_followups
    parameters = {
        **params.model_dump(mode="json"),
        "as_of": as_of.isoformat(),
        "after_days": after_days,
        "max_followups": max_followups,
    }
    with (
        recorded_run(FLOW, parameters, params.dry_run) as summary,
        mailing(summary, mail.Kind.COLLECTION_FOLLOWUP) as mailer,
    ):
        ctx = sweep_context(
            summary,
            params,
            as_of,
            mailer,
            followup_after_days=after_days,
            followup_max=max_followups,
        )
        summary.counts.update(run_batches(batch_task, sweeps.followup_batch, ctx, params))
    return summary

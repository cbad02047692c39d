"""collection-followups: open collection requests unanswered after N days get a follow-up email,
up to a maximum; after the last one (and N more days) the request lapses.

A lapsed request is closed and audited, and counted for compliance; the consent stays
``requested`` (nobody answered, so nothing was given or refused). Emails are claimed before
sending, exactly like reminders (see ``consentflow.sweeps``).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from pydantic import Field

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.settings import get_settings
from flows.common import BATCH_TASK, LifecycleParams, mailing, recorded_run

FLOW = "collection-followups"


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


@task(name="followup-batch", retry_delay_seconds=[10, 60], **BATCH_TASK)
def followup_batch(
    mailer: mail.Mailer | None,
    as_of: datetime,
    after_days: int,
    max_followups: int,
    size: int,
    cursor: int,
    purposes: list[str] | None,
    run_id: str | None,
    dry_run: bool,
) -> sweeps.Batch:
    return sweeps.followup_batch(
        mailer,
        as_of=as_of,
        after_days=after_days,
        max_followups=max_followups,
        size=size,
        cursor=cursor,
        purposes_=purposes,
        run_id=run_id,
        dry_run=dry_run,
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
        for batch in sweeps.drain(
            lambda size, cursor: followup_batch(
                mailer,
                as_of,
                after_days,
                max_followups,
                size,
                cursor,
                params.purposes,
                summary.run_id,
                params.dry_run,
            ),
            batch_size=params.batch_size,
            limit=params.limit,
        ):
            summary.counts.update(batch.counts)
    return summary

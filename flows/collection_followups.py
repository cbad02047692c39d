"""collection-followups: open collection requests unanswered after N days get a follow-up email,
up to a maximum; after the last one (and N more days) the request lapses.

A lapsed request is closed and audited, and counted for compliance; the consent stays
``requested`` (nobody answered, so nothing was given or refused). Emails are claimed before
sending, exactly like reminders (see ``consentflow.sweeps``).
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.settings import get_settings
from flows.common import (
    END_HOOKS,
    AsOf,
    DryRun,
    Limit,
    Purposes,
    batch_field,
    checked,
    form,
    mailing,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "collection-followups"

#: Sending is paced by the mail server; past three hours something is stuck.
TIMEOUT_SECONDS = 3 * 3600

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])

AfterDays = Annotated[
    int | None,
    form(
        "Days before each follow-up",
        "Days without an answer before each follow-up and before lapsing (empty: the "
        "worker's CONSENTFLOW_FOLLOWUP_AFTER_DAYS, by default 7).",
        ge=0,
        le=3650,
    ),
]
MaxFollowups = Annotated[
    int | None,
    form(
        "Follow-ups at most",
        "Follow-ups per request at most (empty: the worker's CONSENTFLOW_FOLLOWUP_MAX, "
        "by default 2).",
        ge=0,
        le=100,
    ),
]


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def collection_followups(
    dry_run: DryRun = False,
    as_of: AsOf = None,
    batch_size: Annotated[int, batch_field("Requests", 10_000)] = 500,
    limit: Limit = None,
    purposes: Purposes = None,
    after_days: AfterDays = None,
    max_followups: MaxFollowups = None,
) -> RunSummary:
    """Follow up or lapse the collection requests due as of ``as_of``, in batches."""
    parameters = checked(
        FLOW,
        {
            "dry_run": dry_run,
            "as_of": as_of,
            "batch_size": batch_size,
            "limit": limit,
            "purposes": purposes,
            "after_days": after_days,
            "max_followups": max_followups,
        },
    )
    settings = get_settings()
    as_of = as_of or utcnow()
    after_days = settings.followup_after_days if after_days is None else after_days
    max_followups = settings.followup_max if max_followups is None else max_followups
    parameters |= {
        "as_of": as_of.isoformat(),
        "after_days": after_days,
        "max_followups": max_followups,
    }
    with (
        recorded_run(FLOW, parameters, dry_run) as summary,
        mailing(summary, mail.Kind.COLLECTION_FOLLOWUP) as mailer,
    ):
        ctx = sweep_context(
            summary,
            as_of,
            purposes,
            mailer,
            followup_after_days=after_days,
            followup_max=max_followups,
        )
        summary.counts.update(
            run_batches(batch_task, sweeps.followup_batch, ctx, batch_size, limit)
        )
    return summary

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

FLOW = "reconsent"

#: Sending is paced by the mail server; past three hours something is stuck.
TIMEOUT_SECONDS = 3 * 3600

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])

#: The steps, in order. Earlier runs' unsent emails are retried first, so that one deferred in
#: this run waits for the next run (a greylisting server wants a pause).
STEPS = (
    sweeps.reconsent_email_batch,
    sweeps.reconsent_open_batch,
    sweeps.reconsent_deadline_batch,
)

DeadlineDays = Annotated[
    int | None,
    form(
        "Days to confirm",
        "Days a person has to confirm before the consent is invalidated (empty: the "
        "worker's CONSENTFLOW_RECONSENT_DEADLINE_DAYS, by default 30).",
        ge=1,
        le=3650,
    ),
]


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def reconsent(
    dry_run: DryRun = False,
    as_of: AsOf = None,
    batch_size: Annotated[int, batch_field("Items", 10_000)] = 500,
    limit: Limit = None,
    purposes: Purposes = None,
    deadline_days: DeadlineDays = None,
) -> RunSummary:
    """Ask for re-consent after material revisions, and enforce the deadlines that passed."""
    parameters = checked(
        FLOW,
        {
            "dry_run": dry_run,
            "as_of": as_of,
            "batch_size": batch_size,
            "limit": limit,
            "purposes": purposes,
            "deadline_days": deadline_days,
        },
    )
    as_of = as_of or utcnow()
    deadline_days = deadline_days or get_settings().reconsent_deadline_days
    parameters |= {"as_of": as_of.isoformat(), "deadline_days": deadline_days}
    with (
        recorded_run(FLOW, parameters, dry_run) as summary,
        mailing(summary, mail.Kind.RECONSENT_REQUEST) as mailer,
    ):
        ctx = sweep_context(summary, as_of, purposes, mailer, reconsent_deadline_days=deadline_days)
        for step in STEPS:
            summary.counts.update(run_batches(batch_task, step, ctx, batch_size, limit))
    return summary

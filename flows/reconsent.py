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

from datetime import datetime

from prefect import flow, task
from pydantic import Field

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from consentflow.settings import get_settings
from flows.common import BATCH_TASK, LifecycleParams, mailing, recorded_run

FLOW = "reconsent"

# Every task of this flow, stale-claim release included, retries after 10 and 60 seconds.
RETRY_DELAYS = [10, 60]


class Params(LifecycleParams):
    """Parameters of a re-consent run (a form in the Prefect UI)."""

    batch_size: int = Field(default=500, ge=1, le=10_000, description="Items per batch.")
    deadline_days: int | None = Field(
        default=None,
        ge=1,
        description="Days to confirm (default: CONSENTFLOW_RECONSENT_DEADLINE_DAYS, 30).",
    )


@task(name="open-requests-batch", retry_delay_seconds=RETRY_DELAYS, **BATCH_TASK)
def open_batch(
    mailer: mail.Mailer | None,
    as_of: datetime,
    deadline_days: int,
    size: int,
    cursor: int,
    purposes: list[str] | None,
    run_id: str | None,
    dry_run: bool,
) -> sweeps.Batch:
    return sweeps.reconsent_open_batch(
        mailer,
        as_of=as_of,
        deadline_days=deadline_days,
        size=size,
        cursor=cursor,
        purposes_=purposes,
        run_id=run_id,
        dry_run=dry_run,
    )


@task(name="resend-requests-batch", retry_delay_seconds=RETRY_DELAYS, **BATCH_TASK)
def email_batch(
    mailer: mail.Mailer | None,
    as_of: datetime,
    size: int,
    cursor: int,
    purposes: list[str] | None,
    run_id: str | None,
    dry_run: bool,
) -> sweeps.Batch:
    return sweeps.reconsent_email_batch(
        mailer,
        as_of=as_of,
        size=size,
        cursor=cursor,
        purposes_=purposes,
        run_id=run_id,
        dry_run=dry_run,
    )


@task(name="deadline-batch", retry_delay_seconds=RETRY_DELAYS, **BATCH_TASK)
def deadline_batch(
    as_of: datetime,
    size: int,
    cursor: int,
    purposes: list[str] | None,
    run_id: str | None,
    dry_run: bool,
) -> sweeps.Batch:
    return sweeps.reconsent_deadline_batch(
        as_of=as_of,
        size=size,
        cursor=cursor,
        purposes_=purposes,
        run_id=run_id,
        dry_run=dry_run,
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
    dry_run, keys = params.dry_run, params.purposes
    with (
        recorded_run(FLOW, parameters, dry_run) as summary,
        mailing(summary, mail.Kind.RECONSENT_REQUEST) as mailer,
    ):
        run_id = summary.run_id
        steps = (
            # Retry earlier runs' unsent emails first, so that one deferred in this run waits
            # for the next run (a greylisting server wants a pause).
            lambda size, cursor: email_batch(mailer, as_of, size, cursor, keys, run_id, dry_run),
            lambda size, cursor: open_batch(
                mailer, as_of, deadline_days, size, cursor, keys, run_id, dry_run
            ),
            lambda size, cursor: deadline_batch(as_of, size, cursor, keys, run_id, dry_run),
        )
        for step in steps:
            for batch in sweeps.drain(step, batch_size=params.batch_size, limit=params.limit):
                summary.counts.update(batch.counts)
    return summary

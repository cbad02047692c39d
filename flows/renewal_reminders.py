"""renewal-reminders: staged reminders before a consent's validity ends (default 30, 7, 1 days).

Each stage is sent at most once per validity period; when a missed run leaves several stages due
at once, only the nearest is sent. The email carries a renew link and a revoke link (also the
RFC 8058 one-click unsubscribe). Renewing restarts the validity and resets the stages. Emails are
claimed before sending, so concurrent or repeated runs never send one twice; a 4xx or timeout
leaves the item due for the next run, a 5xx suppresses the address (see ``consentflow.sweeps``).

``stages`` follows the rule of ``CONSENTFLOW_REMINDER_STAGES`` (``sweeps.parse_stages``): whole
days, at least one, none below 1, duplicates merged; a list, one number, or the setting's text
(``"30,7,1"``). A bad value is refused by the parameter's own validator, so the CLI, the API and
the Prefect UI answer with one error before any run starts.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import AfterValidator, BeforeValidator

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
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

FLOW = "renewal-reminders"

#: Sending is paced by the mail server; past three hours something is stuck.
TIMEOUT_SECONDS = 3 * 3600

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])


def _stages_as_list(value: object) -> object:
    """The setting's text (``"30,7,1"``) or one number, as a list."""
    if isinstance(value, str):
        return list(sweeps.parse_stages(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _stages(value: list[int] | None) -> list[int] | None:
    if value is not None:
        sweeps.parse_stages(value)  # the one rule: ValueError naming the bad value
    return value


Stages = Annotated[
    list[int] | None,
    BeforeValidator(_stages_as_list),
    AfterValidator(_stages),
    form(
        "Reminder stages",
        "Days before the validity ends at which to remind, e.g. [30, 7, 1] (empty: the "
        "worker's CONSENTFLOW_REMINDER_STAGES, by default 30,7,1).",
    ),
]


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def renewal_reminders(
    dry_run: DryRun = False,
    as_of: AsOf = None,
    batch_size: Annotated[int, batch_field("Consents", 10_000)] = 500,
    limit: Limit = None,
    purposes: Purposes = None,
    stages: Stages = None,
) -> RunSummary:
    """Send the renewal reminders due as of ``as_of``, in batches over pooled SMTP connections."""
    parameters = checked(
        FLOW,
        {
            "dry_run": dry_run,
            "as_of": as_of,
            "batch_size": batch_size,
            "limit": limit,
            "purposes": purposes,
            "stages": stages,
        },
    )
    as_of = as_of or utcnow()
    due_stages = sweeps.parse_stages(stages)
    parameters |= {"as_of": as_of.isoformat(), "stages": sorted(due_stages, reverse=True)}
    with (
        recorded_run(FLOW, parameters, dry_run) as summary,
        mailing(summary, mail.Kind.RENEWAL_REMINDER) as mailer,
    ):
        ctx = sweep_context(summary, as_of, purposes, mailer, stages=due_stages)
        summary.counts.update(run_batches(batch_task, sweeps.remind_batch, ctx, batch_size, limit))
    return summary

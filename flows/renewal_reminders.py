"""renewal-reminders: staged reminders before a consent's validity ends (default 30, 7, 1 days).

Each stage is sent at most once per validity period; when a missed run leaves several stages due
at once, only the nearest is sent. The email carries a renew link and a revoke link (also the
RFC 8058 one-click unsubscribe). Renewing restarts the validity and resets the stages. Emails are
claimed before sending, so concurrent or repeated runs never send one twice; a 4xx or timeout
leaves the item due for the next run, a 5xx suppresses the address (see ``consentflow.sweeps``).

``stages`` follows the rule of ``CONSENTFLOW_REMINDER_STAGES`` (``sweeps.parse_stages``): whole
days, at least one, none below 1, duplicates merged; a list, one number, or the setting's text
(``"30,7,1"``). A bad value is refused by ``Params`` itself, so the CLI and the API answer with
one error before any run starts.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field, field_validator

from consentflow import mail, sweeps
from consentflow.models import utcnow
from consentflow.runs import RunSummary
from flows.common import (
    LifecycleParams,
    mailing,
    recorded_run,
    run_batches,
    sweep_batch,
    sweep_context,
)

FLOW = "renewal-reminders"

#: One Prefect task run per batch, retried after 10 and 60 seconds (a transient failure only).
batch_task = sweep_batch.with_options(retry_delay_seconds=[10, 60])


class Params(LifecycleParams):
    """Parameters of a reminder run (a form in the Prefect UI)."""

    batch_size: int = Field(default=500, ge=1, le=10_000, description="Consents per batch.")
    stages: list[int] | None = Field(
        default=None,
        description="Days before the validity ends (default: CONSENTFLOW_REMINDER_STAGES, 30,7,1).",
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _stages_as_list(cls, value: object) -> object:
        """The setting's text (``"30,7,1"``) or one number, as a list."""
        if isinstance(value, str):
            return list(sweeps.parse_stages(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            sweeps.parse_stages(value)  # the one rule: ValueError naming the bad value
        return value


@flow(name=FLOW)
def renewal_reminders(params: Params = Params()) -> RunSummary:
    """Send the renewal reminders due as of ``as_of``, in batches over pooled SMTP connections."""
    as_of = params.as_of or utcnow()
    stages = sweeps.parse_stages(params.stages)
    parameters = {
        **params.model_dump(mode="json"),
        "as_of": as_of.isoformat(),
        "stages": sorted(stages, reverse=True),
    }
    with (
        recorded_run(FLOW, parameters, params.dry_run) as summary,
        mailing(summary, mail.Kind.RENEWAL_REMINDER) as mailer,
    ):
        ctx = sweep_context(summary, params, as_of, mailer, stages=stages)
        summary.counts.update(run_batches(batch_task, sweeps.remind_batch, ctx, params))
    return summary

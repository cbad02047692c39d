"""The Prefect side shared by every flow: the run's identity and its summary artifact."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect.artifacts import create_table_artifact
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field, field_validator, model_validator

from consentflow import db
from consentflow.models import utcnow
from consentflow.runs import RunSummary, record_run


class LifecycleParams(BaseModel):
    """The parameters every lifecycle flow takes (each flow adds its own batch size and more).

    ``as_of`` may lie in the future only for a dry run: previewing what would be due by then is
    useful, but nothing may expire, lapse or be invalidated before its time.
    """

    as_of: datetime | None = Field(
        default=None,
        description="Judge what is due as of this instant (default: now; UTC if no zone is "
        "given). A future instant is allowed only for a dry run.",
    )
    dry_run: bool = Field(default=False, description="Report what would change; change nothing.")
    limit: int | None = Field(default=None, ge=1, description="Stop after this many items.")
    purposes: list[str] | None = Field(
        default=None, description="Only these purposes (keys); default: all."
    )

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _not_ahead_of_time(self) -> LifecycleParams:
        if self.as_of is not None and not self.dry_run and self.as_of > utcnow():
            raise ValueError("as_of is in the future: only a dry run may look ahead")
        return self


def start(flow: str, parameters: dict[str, object], dry_run: bool) -> RunSummary:
    """A summary stamped with this flow run's id and deployment (None outside a deployment)."""
    run_id = flow_run.id
    return RunSummary(
        flow=flow,
        parameters=parameters,
        dry_run=dry_run,
        run_id=str(run_id) if run_id else None,
        deployment=f"{flow_run.flow_name}/{deployment.name}" if deployment.name else None,
    )


def finish(summary: RunSummary, outcome: str = "completed") -> RunSummary:
    """Audit the run and publish its table of counts in the Prefect UI."""
    with db.session_scope() as session:
        record_run(session, summary, outcome)
    create_table_artifact(
        key=f"{summary.flow}-summary",
        table=summary.rows() or [{"purpose": "-", "outcome": "nothing to do", "count": 0}],
        description=(
            f"{summary.flow}{' (dry run)' if summary.dry_run else ''}: "
            f"{summary.total()} item(s), {outcome}"
        ),
    )
    return summary

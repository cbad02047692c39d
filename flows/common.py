"""The Prefect side shared by every flow: the run's identity and its summary artifact."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact
from prefect.runtime import deployment, flow_run

from consentflow import db
from consentflow.runs import RunSummary, record_run


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

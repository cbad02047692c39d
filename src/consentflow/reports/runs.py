"""Flow runs as the audit trail records them: the latest run of each flow, and the latest runs
overall without the ``propagate`` runs that did nothing. Linked to the Prefect UI when its address
is configured (``prefect_ui_url``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy import inspect as sa_inspect
from sqlmodel import Session, col

from consentflow import runs as _runs
from consentflow.db import is_postgres
from consentflow.models import AuditEntry
from consentflow.reports._table import Link, Table
from consentflow.settings import get_settings

_RUN_ACTIONS = ["flow.run", "flow.dry_run"]

_RUN_COLUMNS = ["finished", "flow", "outcome", "dry run", "totals", "requested by", "run"]

#: Outcomes a propagate run reports without having done anything (deliveries still held back).
_IDLE_OUTCOMES = ("held",)


def _flow_names() -> list[str]:
    return _runs.flow_names()


def _detail() -> Any:
    """The audit entry's JSON ``detail`` column (its SQL JSON operators are not typed)."""
    return sa_inspect(AuditEntry).columns["detail"]


def _run_row(r: Any, ui: str) -> list[Any]:
    detail = r.detail or {}
    totals = detail.get("totals") or {}
    text = ", ".join(f"{k}: {v}" for k, v in sorted(totals.items())) or "-"
    run_id = r.run_id or detail.get("run_id")
    run: Any = run_id or "-"
    if run_id and ui:
        run = Link(str(run_id), f"{ui}/runs/flow-run/{run_id}")
    return [
        r.recorded_at,
        detail.get("flow", "?"),
        detail.get("outcome", "?"),
        "yes" if r.action == "flow.dry_run" else "no",
        text,
        detail.get("requested_by") or "-",
        run,
    ]


def _run_entries(where: Any, limit: int) -> Any:
    return (
        select(
            col(AuditEntry.seq),
            col(AuditEntry.recorded_at),
            col(AuditEntry.action),
            col(AuditEntry.run_id),
            col(AuditEntry.detail),
        )
        .where(col(AuditEntry.action).in_(_RUN_ACTIONS), where)
        .order_by(col(AuditEntry.seq).desc())
        .limit(limit)
    )


def _idle_propagate(session: Session) -> ColumnElement[bool]:
    """A propagate run that completed having done nothing: its totals have no outcome besides
    ``held`` (deliveries waiting for a paused system are counted by every run)."""
    detail = _detail()
    if is_postgres(session):
        key: Any = func.json_object_keys(detail["totals"]).column_valued("k")
    else:
        key = func.json_each(detail, "$.totals").table_valued("key").c.key
    acted: Any = select(literal_column("1")).where(key.not_in(_IDLE_OUTCOMES))
    return (
        (detail["flow"].as_string() == "propagate")
        & (detail["outcome"].as_string() == "completed")
        & ~acted.exists()
    )


def runs(session: Session) -> Table:
    """The latest run of each flow (whatever it did: a quiet ``propagate`` shows it is alive),
    from the audit trail, linked to the Prefect UI. One statement: per flow, a newest-first
    walk of the run entries that stops at the flow's first."""
    ui = (get_settings().prefect_ui_url or "").rstrip("/")
    detail = _detail()
    latest = [
        select(col(AuditEntry.seq))
        .where(col(AuditEntry.action).in_(_RUN_ACTIONS), detail["flow"].as_string() == name)
        .order_by(col(AuditEntry.seq).desc())
        .limit(1)
        .scalar_subquery()
        for name in _flow_names()
    ]
    table = Table(
        "runs",
        "Latest run of each flow",
        _RUN_COLUMNS,
        note="Each flow's most recent run (dry run or real), newest first; flows that never "
        "ran are not listed.",
    )
    rows = session.execute(_run_entries(col(AuditEntry.seq).in_(latest), len(latest)))
    table.rows = [_run_row(r, ui) for r in rows]
    return table


def recent_runs(session: Session, limit: int = 10) -> Table:
    """The latest flow runs overall, leaving out the ``propagate`` runs that did nothing (a
    frequent schedule would otherwise push every other run off the list)."""
    ui = (get_settings().prefect_ui_url or "").rstrip("/")
    table = Table(
        "recent_runs",
        "Recent flow runs",
        _RUN_COLUMNS,
        note=f"The {limit} latest runs of any flow; propagate runs that delivered nothing "
        "(at most deliveries held for a paused system) are left out.",
    )
    rows = session.execute(_run_entries(~_idle_propagate(session), limit))
    table.rows = [_run_row(r, ui) for r in rows]
    return table

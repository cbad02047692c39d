"""SQL helpers shared by the reports. The one dialect difference of the dashboard (turning a
timestamp into a UTC day) lives in ``day``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select
from sqlmodel import Session, col

from consentflow.db import is_postgres
from consentflow.models import Purpose, State

STATES = [s.value for s in State]
ALL = "(all purposes)"


def utc_day(session: Session, column: Any) -> ColumnElement[str]:
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD', in SQL."""
    if is_postgres(session):
        return func.to_char(
            func.timezone(literal_column("'UTC'"), column), literal_column("'YYYY-MM-DD'")
        )
    return func.date(column)


def count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def purpose_keys(session: Session) -> dict[int, str]:
    return {
        pid: key for pid, key in session.execute(select(col(Purpose.id), col(Purpose.key))).all()
    }


def midnight(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)

"""Read-side reports: plain functions over a session that return data (no web, no templates).

The compliance dashboard's tables (``build``, ``table``, ``TABLES``) and the read queries of the
API's lists (``requests_page``, ``purpose_systems``; deliveries are ``delivery.ops``'s).
The web app renders them; the CLI can read them too. Reports sit beside ``sweeps`` and
``delivery`` in the layers: they import ledger modules, never ``delivery`` (its health rows are
passed in) or a door.

Failure modes: none of their own; they only read (safe in a read-only unit of work).
"""

from consentflow.reports._links import lists
from consentflow.reports._sql import ALL, STATES
from consentflow.reports._table import Chart, Flag, Link, Series, Table
from consentflow.reports.catalog import purpose_systems
from consentflow.reports.consents import (
    ANOMALY_FACTOR,
    ANOMALY_MIN,
    BASELINE_DAYS,
    MAX_RANGE_DAYS,
    MEASURES,
    MIN_HISTORY_DAYS,
    TREND_DAYS,
    Range,
    anomalies,
    anomalous_days,
    default_range,
    event_days,
    expiring,
    first_days,
    parse_range,
    series_by,
    states,
    trend,
)
from consentflow.reports.dashboard import TABLES, Dashboard, HealthSource, Tile, build, table
from consentflow.reports.deliveries import (
    HealthRow,
    age,
    delivery,
)
from consentflow.reports.requests import pending_requests, reconsent, requests_page
from consentflow.reports.runs import recent_runs, runs

__all__ = [
    "ALL",
    "ANOMALY_FACTOR",
    "ANOMALY_MIN",
    "BASELINE_DAYS",
    "MAX_RANGE_DAYS",
    "MEASURES",
    "MIN_HISTORY_DAYS",
    "STATES",
    "TABLES",
    "TREND_DAYS",
    "Chart",
    "Dashboard",
    "Flag",
    "HealthRow",
    "HealthSource",
    "Link",
    "Range",
    "Series",
    "Table",
    "Tile",
    "age",
    "anomalies",
    "anomalous_days",
    "build",
    "default_range",
    "delivery",
    "event_days",
    "expiring",
    "first_days",
    "lists",
    "parse_range",
    "pending_requests",
    "purpose_systems",
    "recent_runs",
    "reconsent",
    "requests_page",
    "runs",
    "series_by",
    "states",
    "table",
    "trend",
]

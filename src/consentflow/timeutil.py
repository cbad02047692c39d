"""The one time module: every instant consentflow reads from a person or prints goes through here.

Invariants:

- Every datetime inside consentflow is timezone-aware UTC. ``utcnow()`` is the only clock (it
  lives in ``models`` next to the column type that enforces the rule, and is re-exported here).
- A user-given instant (a CLI option, an API query parameter, a CSV cell) is ISO 8601: a date
  (``2026-01-31``, midnight UTC) or a date and time, with or without a zone; without a zone it is
  UTC. ``parse_instant`` returns an aware UTC datetime or raises ``InvalidInput`` with one line
  that names the field or option and shows (at most 40 characters of) the bad value.
- Output has three forms and no others:
  ``iso_z`` ISO 8601 with ``Z`` (JSON, receipts, API; microseconds kept when present — the same
  text Pydantic writes for an aware UTC datetime in ``model_dump(mode="json")``);
  ``iso_seconds`` ISO 8601 to the second with ``Z`` (messages and reasons written into history);
  ``display`` the human form for the CLI's text output and pages (``2026-01-31 12:00:00Z``).
  ``stamp`` is the compact form for file names (``20260131T120000Z``).
- The audit chain's canonical timestamp form is NOT here: it is part of the hashed bytes and
  stays, byte-identical, in ``consentflow.audit``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from consentflow.errors import InvalidInput
from consentflow.models import utcnow

EXAMPLE = "2026-01-31 or 2026-01-31T12:00:00Z"


@overload
def as_utc(value: datetime | str) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | str | None) -> datetime | None: ...
def as_utc(value: datetime | str | None) -> datetime | None:
    """A stored or computed instant as aware UTC (a naive one, or an ISO string, is taken as UTC).

    For values we produced ourselves (aggregates that bypass the column type on SQLite, JSON we
    wrote); a malformed string here is a bug, so it raises ``ValueError`` rather than
    ``InvalidInput``. For anything a person typed, use ``parse_instant``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_instant(value: str | None, field: str) -> datetime | None:
    """A user-given ISO 8601 instant as aware UTC; ``None`` and ``""`` stay ``None``.

    ``field`` names where the value came from, as the user wrote it (``--at``, ``since``,
    ``valid_until``): it leads the one-line error, e.g. ``bad --at 'last tuesday': use ISO 8601,
    e.g. 2026-01-31 or 2026-01-31T12:00:00Z``.
    """
    if value is None or value == "":
        return None
    try:
        return as_utc(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError):
        raise InvalidInput(f"bad {field} {value[:40]!r}: use ISO 8601, e.g. {EXAMPLE}") from None


def iso_z(ts: datetime | None) -> str | None:
    """ISO 8601 with ``Z`` for JSON: ``2026-01-31T12:00:00Z`` (``.123456`` kept when present)."""
    if ts is None:
        return None
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def iso_seconds(ts: datetime | None, none: str = "never") -> str:
    """ISO 8601 to the second with ``Z``, for sentences: ``2026-01-31T12:00:00Z``."""
    return as_utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else none


def display(ts: datetime | None, none: str = "-") -> str:
    """The human form for text output: ``2026-01-31 12:00:00Z``; ``none`` when there is no time."""
    return as_utc(ts).strftime("%Y-%m-%d %H:%M:%SZ") if ts else none


def stamp(ts: datetime | None = None) -> str:
    """The compact form for file names: ``20260131T120000Z`` (now, if no time is given)."""
    return (as_utc(ts) if ts else utcnow()).strftime("%Y%m%dT%H%M%SZ")


__all__ = [
    "EXAMPLE",
    "as_utc",
    "display",
    "iso_seconds",
    "iso_z",
    "parse_instant",
    "stamp",
    "utcnow",
]

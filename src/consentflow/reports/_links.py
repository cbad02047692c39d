"""Where a dashboard number leads: the address of the list of the people (or deliveries) it
counts, ``/lists/{cohort}?filters``.

The cohorts and their filters are the workspace's contract (the list pages are
``reports.cohorts``'s): ``consents`` (``purpose``, ``state``), ``not-reconfirmed`` (``purpose``;
``asked=no``), ``requests`` (``purpose``, ``kind``; ``since``/``until``: asked; ``due_since``/
``due_until``: deadline), ``expiring`` (``days``, ``purpose``), ``withdrawals`` and ``changes``
(``since``, ``until``; ``purpose``; ``channel``; ``action``: changes), ``deliveries``
(``system``, ``status=dead|undelivered``). "All purposes" is no ``purpose`` filter.

A list's ``until`` is exclusive; a dashboard's days are UTC days, both included: ``days`` turns
the one into the other, so a day's number leads to that day's rows (``since=D&until=D+1``).

An instant is written exactly (``timeutil.iso_z``: microseconds kept), so a link bounded by the
instants a count was made with lists exactly the rows counted.

Failure modes: none; pure string building (values are URL-encoded).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from urllib.parse import urlencode

from consentflow.reports._sql import ALL
from consentflow.timeutil import iso_z


def lists(cohort: str, **filters: str | int | datetime | None) -> str:
    """``/lists/{cohort}`` with the filters that are set (``purpose`` of "all purposes" left
    out), in the order given; instants as ISO 8601 with ``Z``, to the microsecond."""
    kept = [
        (key, iso_z(value) if isinstance(value, datetime) else str(value))
        for key, value in filters.items()
        if value is not None and not (key == "purpose" and value == ALL)
    ]
    return f"/lists/{cohort}" + (f"?{urlencode(kept)}" if kept else "")


def days(first: str, last: str | None = None) -> dict[str, str]:
    """The list filters of the UTC days ``first`` to ``last`` (default ``first``), both
    included (``YYYY-MM-DD``): ``since`` the first, ``until`` the day after the last."""
    after = date.fromisoformat(last or first) + timedelta(days=1)
    return {"since": first, "until": after.isoformat()}

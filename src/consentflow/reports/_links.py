"""Where a dashboard number leads: the address of the list of the people (or deliveries) it
counts, ``/lists/{cohort}?filters``.

The cohorts and their filters are the workspace's contract (the list pages are
``reports.cohorts``'s): ``consents`` (``purpose``, ``state``), ``not-reconfirmed`` (``purpose``;
``asked=no``), ``requests`` (``purpose``), ``expiring`` (``days``, ``purpose``), ``withdrawals``
(``since``, ``until``: UTC days, both included; ``purpose``; ``channel``), ``deliveries``
(``system``, ``status=dead|undelivered``). "All purposes" is no ``purpose`` filter.

Failure modes: none; pure string building (values are URL-encoded).
"""

from __future__ import annotations

from urllib.parse import urlencode

from consentflow.reports._sql import ALL


def lists(cohort: str, **filters: str | int | None) -> str:
    """``/lists/{cohort}`` with the filters that are set (``purpose`` of "all purposes" left
    out), in the order given."""
    kept = [
        (key, str(value))
        for key, value in filters.items()
        if value is not None and not (key == "purpose" and value == ALL)
    ]
    return f"/lists/{cohort}" + (f"?{urlencode(kept)}" if kept else "")

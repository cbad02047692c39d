"""Output models of the cohort lists (``reports.cohorts``): one row model per row shape, a page.

The fields of each row model, in order, are that list's columns (the CSV header). ``email`` is
last and present only when the caller may and did ask for it (``include=email``): a row built
without it leaves it unset, and pages are written with ``exclude_unset`` so it is absent, not
null. Export rows are written in bulk (``cohort_jsonl``, ``cohort_csv``) in the models' JSON form
(times ISO 8601 with ``Z``, ids as text); a test compares them with ``model_dump_json``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from consentflow.timeutil import iso_z
from consentflow.views._base import TextId, View


class ConsentRowOut(View):
    """A consent (lists ``consents``, ``not-reconfirmed``, ``expiring``)."""

    subject: str
    purpose: str
    #: The state now: a given consent past its end is ``expired``, as the access check says.
    state: str
    purpose_version: int
    #: The channel of the consent's latest change.
    channel: str
    locale: str | None
    given_at: datetime | None
    valid_until: datetime | None
    updated_at: datetime
    #: The consent's latest event.
    event_id: TextId
    email: str | None = None


class RequestRowOut(View):
    """An open consent request (list ``requests``)."""

    request_id: int
    subject: str
    purpose: str
    kind: str
    status: str
    purpose_version: int
    locale: str | None
    requested_at: datetime
    deadline: datetime | None
    followups_sent: int
    email: str | None = None


class WithdrawalRowOut(View):
    """A withdrawal event (list ``withdrawals``)."""

    event_id: TextId
    subject: str
    purpose: str
    recorded_at: datetime
    occurred_at: datetime
    previous_state: str | None
    purpose_version: int
    channel: str
    actor_type: str
    locale: str | None
    email: str | None = None


class ChangeRowOut(View):
    """A consent change: a grant, withdrawal, expiry, import, ... (list ``changes``)."""

    event_id: TextId
    subject: str
    purpose: str
    action: str
    recorded_at: datetime
    occurred_at: datetime
    previous_state: str | None
    state: str
    purpose_version: int
    channel: str
    actor_type: str
    locale: str | None
    email: str | None = None


class DeliveryRowOut(View):
    """An undelivered or dead delivery (list ``deliveries``)."""

    delivery_id: int
    system: str
    #: The subject the withdrawal is about (an erased person's tombstone id for ``subject.erased``).
    subject: str
    #: None for a ``subject.erased`` delivery.
    purpose: str | None
    event_type: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    email: str | None = None


ListRowOut = ConsentRowOut | RequestRowOut | WithdrawalRowOut | ChangeRowOut | DeliveryRowOut


class ListPageOut(View):
    """One page of a cohort list, in the cohort's keyset order."""

    cohort: str
    #: The filters applied, as given (text).
    filters: dict[str, str]
    limit: int
    #: Pass as ``cursor`` for the next page; None on the last page.
    next: str | None
    rows: list[ListRowOut]


class CohortOut(View):
    """A list there is: its name, what it holds, the filters it takes, its columns."""

    name: str
    title: str
    description: str
    filters: list[str]
    columns: list[str]


#: Times as ISO 8601 with ``Z``; a naive time (SQLite's) is UTC.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_APPEND_NEWLINE


def cohort_jsonl(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows (tuples whose first values are ``names``, in a row model's field order; any values
    after them are left out) as JSON Lines of that model."""
    dumps, options = orjson.dumps, _OPTIONS
    return b"".join([dumps(dict(zip(names, r, strict=False)), option=options) for r in rows])


def _z(value: datetime) -> str:
    """A UTC time (aware, or naive as SQLite gives it) as ISO 8601 with ``Z``."""
    text = value.isoformat()
    if value.tzinfo is None:
        return text + "Z"
    return text[:-6] + "Z" if text.endswith("+00:00") else str(iso_z(value))


def cohort_csv_header(columns: Sequence[str]) -> bytes:
    return (",".join(columns) + "\n").encode()


#: Columns of free text from outside (an address as given, a receiver's error): a cell that a
#: spreadsheet would read as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) gets a ``'``
#: before it in CSV (OWASP's CSV injection advice); JSON Lines keeps the value as it is.
FREE_TEXT = frozenset({"email", "last_error"})
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cohort_csv(rows: Sequence[Sequence[Any]], names: Sequence[str], times: Sequence[int]) -> bytes:
    """Rows (tuples whose first values are the columns ``names``, in order) as CSV lines; the
    values at ``times`` are times (ISO 8601 with ``Z``); None is an empty cell; free text that
    would start a formula is defused (``FREE_TEXT``)."""
    width = len(names)
    text = [i for i, name in enumerate(names) if name in FREE_TEXT]

    def cells(row: Sequence[Any]) -> list[Any]:
        out = list(row[:width])
        for i in times:
            if out[i] is not None:
                out[i] = _z(out[i])
        for i in text:
            if out[i] and out[i].startswith(_FORMULA):
                out[i] = "'" + out[i]
        return out

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(map(cells, rows))
    return buffer.getvalue().encode()

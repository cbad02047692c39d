"""Output models of the transfer gate: the batch check's answer and an export's rows.

An export's rows are written in bulk (``eligible_jsonl``, ``eligible_csv``): at tens of thousands
of rows a second, building a model per row would cost more than reading it. Both write exactly
``EligibleOut``'s fields in its order and its JSON form (times as ISO 8601 with ``Z``, the event
id as text); a test compares them with ``model_dump_json``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from consentflow.timeutil import iso_z
from consentflow.views._base import Name, TextId, View


class BatchItemOut(View):
    """One subject's answer in a batch check (the access check's fields, per subject)."""

    subject: str
    allowed: bool
    reason: Name
    state: Name | None
    purpose_version: int | None
    valid_until: datetime | None
    #: The consent event the answer relies on.
    event_id: TextId | None


class BatchCheckOut(View):
    purpose: str
    system: str
    checked_at: datetime
    #: How many ids were asked about, and how many of them are cleared.
    checked: int
    allowed: int
    #: SHA-256 of the cleared subjects' ids, each followed by a newline, in the order asked.
    sha256: str
    #: The ``transfer.checked`` audit entry that records this answer.
    audit_seq: int
    decisions: list[BatchItemOut]


class EligibleOut(View):
    """One subject an export clears for transfer, with the evidence its consent rests on."""

    subject: str
    #: The consent event the answer rests on (the latest change of that consent).
    event_id: TextId
    purpose_version: int
    valid_until: datetime | None


#: An export's columns, in order (the CSV header).
ELIGIBLE_FIELDS: tuple[str, ...] = tuple(EligibleOut.model_fields)
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
#: What makes ``csv.writer`` quote a field (its defaults: the delimiter, quote, line breaks).
_CSV_QUOTED = re.compile(r'[,"\r\n]')


def eligible_jsonl(rows: Sequence[Any]) -> bytes:
    """``rows`` (``transfers.Eligible``: a dataclass with ``ELIGIBLE_FIELDS``, in that order,
    which orjson writes as it is) as JSON Lines of ``EligibleOut``.

    The page is written as one JSON array, cut into lines between its objects: several times
    faster than a call per row. No value can hold ``},{`` (ids, event ids, numbers and times);
    if one ever did, the line count would not match and the rows are written one by one.
    """
    if not rows:
        return b""
    lines = orjson.dumps(rows, option=orjson.OPT_UTC_Z)[1:-1].replace(b"},{", b"}\n{") + b"\n"
    if lines.count(b"\n") == len(rows):
        return lines
    return b"".join(orjson.dumps(r, option=_OPTIONS) for r in rows)


def eligible_csv(rows: Sequence[Any], *, header: bool = False) -> bytes:
    """``rows`` (``transfers.Eligible``) as CSV lines of ``EligibleOut`` (``header`` first).

    Ids, event ids, numbers and times never need CSV quoting, so lines are joined as they are;
    a page with a value that would (checked in one pass) goes through ``csv.writer`` instead.
    """
    head = ",".join(ELIGIBLE_FIELDS) + "\n" if header else ""
    if not _CSV_QUOTED.search("".join(r.subject for r in rows)):
        body = "".join(
            f"{r.subject},{r.event_id},{r.purpose_version},{iso_z(r.valid_until) or ''}\n"
            for r in rows
        )
        return (head + body).encode()
    out = io.StringIO()
    out.write(head)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(
        (r.subject, str(r.event_id), r.purpose_version, iso_z(r.valid_until) or "") for r in rows
    )
    return out.getvalue().encode()

"""The cohort lists' vocabulary: the list names, the filters (parsed from text the same way for
the API, the pages and the CLI) and the opaque keyset cursors.

A filter's bad value is ``InvalidInput`` whose message starts with the filter's name (the doors
show it as it is: the API's 422 names the field). A cursor carries the list's name and the last
row's order key, so a cursor of another list, or anything else, is refused the same way.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from consentflow.errors import InvalidInput
from consentflow.models import Action, Channel, RequestKind, State
from consentflow.timeutil import iso_z, parse_instant


class Cohort(StrEnum):
    CONSENTS = "consents"
    NOT_RECONFIRMED = "not-reconfirmed"
    REQUESTS = "requests"
    EXPIRING = "expiring"
    WITHDRAWALS = "withdrawals"
    CHANGES = "changes"
    DELIVERIES = "deliveries"


@dataclass(frozen=True)
class Filters:
    """What a list is narrowed to; None is "any". Names are the API's query parameters."""

    purpose: str | None = None
    state: str | None = None
    channel: str | None = None
    locale: str | None = None
    version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    system: str | None = None
    kind: str | None = None
    days: int | None = None
    asked: str | None = None
    status: str | None = None
    action: str | None = None
    due_since: datetime | None = None
    due_until: datetime | None = None

    def given(self) -> dict[str, str]:
        """The filters set, as text (for the audit entry, links and the CSV file name)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = (iso_z(value) or "") if isinstance(value, datetime) else str(value)
        return out


# ------------------------------------------------------------------------------ filters

#: The values the enumerated filters take (the API shows them; the other doors check them here).
CHOICES: dict[str, tuple[str, ...]] = {
    "state": tuple(s.value for s in State),
    "channel": tuple(c.value for c in Channel),
    "kind": tuple(k.value for k in RequestKind),
    "asked": ("yes", "no"),
    "status": ("dead", "undelivered"),
    "action": tuple(a.value for a in Action),
}
#: The time filters: each pair is a range, the first inclusive, the second exclusive.
TIMES = ("since", "until", "due_since", "due_until")
MAX_DAYS = 3650
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def parse_filters(raw: Mapping[str, str | None]) -> Filters:
    """Filters from text (a query string, a form, CLI options): blank is "any"; a bad value is
    ``InvalidInput`` naming the field and what it takes. Unknown names are refused too."""
    given = {k: v.strip() for k, v in raw.items() if v is not None and v.strip()}
    names = {f.name for f in fields(Filters)}
    for name in given:
        if name not in names:
            raise InvalidInput(f"{name}: not a filter (filters: {', '.join(sorted(names))})")
    for name, allowed in CHOICES.items():
        if name in given and given[name] not in allowed:
            got = given[name][:40]
            raise InvalidInput(f"{name}: use one of {', '.join(allowed)} (got {got!r})")
    for name in ("purpose", "system"):
        if name in given and not _NAME.match(given[name]):
            raise InvalidInput(f"{name}: not a {name} name: {given[name][:40]!r}")
    if "locale" in given and not _LOCALE.match(given["locale"]):
        got = given["locale"][:40]
        raise InvalidInput(f"locale: use a language tag such as en or fr-CA (got {got!r})")
    numbers: dict[str, int] = {}
    for name, top in (("version", 2**31 - 1), ("days", MAX_DAYS)):
        if name in given:
            try:
                numbers[name] = int(given[name])
            except ValueError:
                numbers[name] = 0
            if not 1 <= numbers[name] <= top:
                got = given[name][:40]
                raise InvalidInput(f"{name}: a whole number from 1 to {top} (got {got!r})")
    times: dict[str, datetime | None] = {}
    for name in TIMES:
        try:
            times[name] = parse_instant(given.get(name), name)
        except InvalidInput:
            raise InvalidInput(
                f"{name}: not an ISO 8601 date or instant (e.g. 2026-01-31 or "
                f"2026-01-31T12:00:00Z): {given[name][:40]!r}"
            ) from None
    return Filters(
        purpose=given.get("purpose"),
        state=given.get("state"),
        channel=given.get("channel"),
        locale=given.get("locale"),
        version=numbers.get("version"),
        since=times["since"],
        until=times["until"],
        system=given.get("system"),
        kind=given.get("kind"),
        days=numbers.get("days"),
        asked=given.get("asked"),
        status=given.get("status"),
        action=given.get("action"),
        due_since=times["due_since"],
        due_until=times["due_until"],
    )


# ------------------------------------------------------------------------------ cursors


def encode_cursor(cohort: Cohort, key: tuple[Any, ...]) -> str:
    """The opaque ``next`` cursor: the cohort and the last row's order key."""
    values = [iso_z(v) if isinstance(v, datetime) else str(v) for v in key]
    return base64.urlsafe_b64encode(orjson.dumps([cohort.value, *values])).decode().rstrip("=")


def decode_cursor(cohort: Cohort, cursor: str, kinds: tuple[str, ...]) -> tuple[Any, ...]:
    """The order key a cursor carries (``kinds``: "int", "time" or "uuid" per key column);
    ``InvalidInput`` for one that is not this list's."""
    bad = InvalidInput(
        f"cursor: not a cursor of the {cohort.value} list; "
        "use the 'next' value of its previous page, or leave it out to start"
    )
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or raw[:1] != [cohort.value] or len(raw) != len(kinds) + 1:
            raise bad
        return tuple(_key(kind, str(v)) for kind, v in zip(kinds, raw[1:], strict=True))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, InvalidInput):
        raise bad from None


def _key(kind: str, value: str) -> Any:
    if kind == "int":
        number = int(value)
        if not 0 <= number < 2**63:
            raise ValueError(value)
        return number
    if kind == "uuid":
        return uuid.UUID(value)
    parsed = parse_instant(value, "cursor")
    if parsed is None:
        raise ValueError(value)
    return parsed

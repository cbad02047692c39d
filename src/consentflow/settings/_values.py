"""The values settings are made of: the key list, reminder stages, places, the controller.

Each ``parse_*`` / ``split_*`` function is the one rule for its value, used where the value is
read (``Settings``' validators at start-up) and wherever the same value comes from elsewhere (a
flow parameter, a receipt); each raises ``ValueError`` with one line that never echoes a key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ENV_PREFIX = "CONSENTFLOW_"
#: The shortest ``CONSENTFLOW_SECRET_KEY`` production mode accepts.
MIN_PRODUCTION_KEY = 32


def parse_stages(value: str | Sequence[int]) -> tuple[int, ...]:
    """Reminder stages in days, nearest first: ``"30,7,1"`` -> ``(1, 7, 30)``: the one rule for
    ``CONSENTFLOW_REMINDER_STAGES``, a flow's ``stages`` parameter and a sweep's context.

    Raises ``ValueError`` (one line) for an empty list, something that is not a whole number, or a
    number of days below 1; duplicates are merged (each stage is sent at most once anyway).
    """
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            numbers = [int(v) for v in items]
        except ValueError:
            raise ValueError(f"bad reminder stages {value!r}: use days, e.g. 30,7,1") from None
    else:
        numbers = [int(v) for v in value]
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"bad reminder stages {value!r}: give positive numbers of days")
    return tuple(sorted(set(numbers)))


def split_keys(value: str) -> tuple[str, ...]:
    """``CONSENTFLOW_SECRET_KEY`` as keys, newest first: the one rule for the key list.

    A value without a comma is one key, exactly as given (as before keys could rotate, so a
    stored value made with it stays valid). Otherwise each comma-separated item is a key, spaces
    around it removed. Raises ``ValueError`` (one line, never echoing a key) for an empty item or
    a key listed twice.
    """
    if "," not in value:
        return (value,)
    items = [item.strip() for item in value.split(",")]
    for i, item in enumerate(items, 1):
        if not item:
            raise ValueError(
                f"key {i} of {len(items)} is empty: separate the keys with single commas, newest "
                "first (no key may contain a comma)"
            )
        if item in items[: i - 1]:
            raise ValueError(
                f"key {i} of {len(items)} repeats key {items.index(item) + 1}: list each key once"
            )
    return tuple(items)


_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ().-]*[0-9]$")
#: An ISO 3166-1 alpha-2 country, an ISO 3166-2 subdivision (``DE-BY``) or ``EU``.
_PLACE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")


def parse_places(value: str, *, at_least_one: bool = False) -> tuple[str, ...]:
    """``"ie, de"`` -> ``("IE", "DE")``: the one rule for the jurisdiction and the storage
    locations of receipts. Raises ``ValueError`` (one line) for a code that is not ISO 3166
    (``IE``, ``DE-BY``) or ``EU``, or, with ``at_least_one``, for none at all."""
    codes = tuple(dict.fromkeys(c.strip().upper() for c in value.split(",") if c.strip()))
    for code in codes:
        if not _PLACE.match(code):
            raise ValueError(f"bad place {code[:20]!r}: use ISO 3166 codes (IE, DE-BY) or EU")
    if at_least_one and not codes:
        raise ValueError("give a place: an ISO 3166 code (IE, DE-BY) or EU")
    return codes


@dataclass(frozen=True)
class Controller:
    """Who is responsible for the data (GDPR art. 4(7); ISO/IEC TS 27560 ``pii_controllers``):
    shown in every people page and email footer and named in every receipt. Only ``name`` is
    always set (default ``consentflow``, so a fresh checkout works)."""

    name: str
    privacy_url: str | None = None
    contact: str | None = None
    address: str | None = None
    dpo: str | None = None
    logo_url: str | None = None
    phone: str | None = None

    @property
    def dpo_is_email(self) -> bool:
        """Whether ``dpo`` is an address (shown as ``mailto:``) rather than a URL."""
        return bool(self.dpo and _EMAIL.match(self.dpo))

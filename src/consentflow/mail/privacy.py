"""What of an address may be kept: a keyed hash for the suppression list, and nothing in text.

``address_hash`` is the suppression key (HMAC-SHA256 of the lowercased address, under the
reference key, ``keys.reference_key``, which never rotates, so the list keeps matching);
``redact`` makes a server reply fit to store or log (every address replaced).
"""

from __future__ import annotations

import re

from consentflow import keys


def address_hash(secret: bytes, address: str) -> str:
    """The suppression key of an address: HMAC-SHA256 of its lowercased form."""
    normalised = address.strip().lower()
    return keys.derive(secret, "email:", normalised).hex()


_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


def redact(text: str, limit: int = 300) -> str:
    """A server reply fit to store: addresses replaced, one line, bounded length."""
    return _ADDRESS.sub("<address>", " ".join(text.split()))[:limit]

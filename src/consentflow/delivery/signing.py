"""Standard Webhooks 1.0 signing: the only place consentflow computes a webhook signature.

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the
key is the base64-decoded part of a ``whsec_...`` secret and the timestamp is integer Unix
seconds. During a secret rotation both secrets sign, new first, space-separated, so a receiver
holding either one verifies. Receivers check the timestamp against their own clock (the
``standardwebhooks`` package allows five minutes either way), so the timestamp is always the wall
clock at the moment of sending, never a simulated "now".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence

from consentflow.errors import InvalidInput

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret (the prefix is optional, padding too)."""
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("bad webhook secret: expected whsec_ followed by base64") from None
    if not key:
        raise InvalidInput("bad webhook secret: it is empty")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` (the exact bytes sent)."""
    to_sign = f"{webhook_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, in the order given."""
    if not secrets:
        raise InvalidInput("no webhook secret to sign with")
    return " ".join(sign(s, webhook_id, timestamp, body) for s in secrets)


def headers(
    secrets: Sequence[str], webhook_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers (plus the content type) for one attempt."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secrets, webhook_id, ts, body),
    }

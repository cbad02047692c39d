"""Signed, short-lived result values: what a POST on a link page did, carried to the page it
redirects to (``/l/{token}?r=VALUE``).

Every answer on a link or preference page is a POST that redirects (303) to a GET of the same
link with ``r``: the message there comes only from this value, so a reload shows the same
confirmation and records nothing, and a hand-edited URL shows none. The value is
``base64url(json) "." base64url(HMAC)`` under a key derived from the newest instance key for this
use (``keys.derive``; any key in the list verifies, so a rotation spoils no value), bound to
the link token it was issued for (it is worthless on another link) and valid for ``MAX_AGE``
seconds. It carries no personal data: the answer, the purpose key, the outcome and a count.

Failure mode: ``read`` returns None for anything not genuine, bound to another link, expired or
malformed; the page then shows no confirmation.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from dataclasses import dataclass

from sqlmodel import Session

from consentflow.keys import derive, signing_keys

#: How long a result page shows its confirmation.
MAX_AGE = 15 * 60


@dataclass(frozen=True)
class Result:
    """What a POST did: the answer recorded (``grant``, ``refuse``, ``revoke``, ``renew``,
    ``withdraw_all``), the purpose key (None for every purpose), ``done`` or ``unchanged``,
    and how many consents changed."""

    answer: str
    purpose: str | None
    outcome: str
    count: int = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _macs(session: Session, binding: str, body: str) -> list[str]:
    """The value's MAC under each instance key, newest (the one that signs) first."""
    return [
        _b64(derive(derive(key, "consentflow-web:result"), f"{binding}|{body}"))
        for key in signing_keys(session)
    ]


def sign(session: Session, binding: str, result: Result, *, now: float | None = None) -> str:
    """A value carrying ``result`` for the link ``binding``."""
    claims = {
        "a": result.answer,
        "p": result.purpose,
        "o": result.outcome,
        "n": result.count,
        "t": int(now if now is not None else time.time()),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_macs(session, binding, body)[0]}"


def read(
    session: Session, binding: str, value: str | None, *, now: float | None = None
) -> Result | None:
    """The result in a genuine, unexpired value issued for ``binding``; else None."""
    if not value or len(value) > 500:
        return None
    body, sep, sig = value.partition(".")
    if not sep or not any(
        hmac.compare_digest(mac.encode(), sig.encode()) for mac in _macs(session, binding, body)
    ):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        issued = int(claims["t"])
        result = Result(str(claims["a"]), claims["p"], str(claims["o"]), int(claims["n"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    if not 0 <= (now if now is not None else time.time()) - issued <= MAX_AGE:
        return None
    return result

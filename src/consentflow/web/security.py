"""Signed values for the browser: the session cookie and CSRF tokens.

Both are HMACs under keys derived from the instance secret (``keys.derive``), one key per use, so
a value made for one purpose is never accepted for another.

- The session cookie carries the signed-in token's *hash* and the sign-in time, never the token.
  Each request looks the hash up again, so revoking the token ends its sessions at once; the
  signature means a database dump (which holds the hashes) is not enough to forge a session.
- A CSRF token is ``TIME.HMAC(binding|TIME)``. For signed-in pages the binding is a random value
  kept in an HttpOnly cookie (signed double submit); for the email-link pages it is the link token
  itself, so those forms need no cookie at all.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time

from sqlmodel import Session

from consentflow.keys import derive, instance_secret

SESSION_COOKIE = "cf_session"
CSRF_COOKIE = "cf_csrf"
CSRF_FIELD = "csrf_token"
#: How long a rendered form stays usable.
CSRF_MAX_AGE = 12 * 3600


def _key(session: Session, purpose: str) -> bytes:
    """The key of one use (``session``, ``csrf``), derived from the instance secret."""
    return derive(instance_secret(session), f"consentflow-web:{purpose}")


def _sign(key: bytes, message: str) -> str:
    """The HMAC of ``message`` under ``key``, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(derive(key, message)).rstrip(b"=").decode()


# ------------------------------------------------------------------------------- session cookie


def session_cookie(session: Session, token_hash: str, *, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    body = f"{token_hash}.{issued}"
    return f"{body}.{_sign(_key(session, 'session'), body)}"


def read_session_cookie(
    session: Session, value: str, max_age: int, *, now: float | None = None
) -> str | None:
    """The token hash in a genuine, unexpired session cookie, else None."""
    parts = value.split(".")
    if len(parts) != 3 or len(value) > 300:
        return None
    token_hash, issued, sig = parts
    if not issued.isdigit():
        return None
    expected = _sign(_key(session, "session"), f"{token_hash}.{issued}")
    if not hmac.compare_digest(expected, sig):
        return None
    if int(issued) + max_age < (now if now is not None else time.time()):
        return None
    return token_hash


# ---------------------------------------------------------------------------------------- CSRF


def new_csrf_binding() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(session: Session, binding: str, *, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_sign(_key(session, 'csrf'), f'{binding}|{issued}')}"


def check_csrf(session: Session, binding: str | None, token: str | None) -> bool:
    """Whether ``token`` was issued for ``binding`` within ``CSRF_MAX_AGE``."""
    if not binding or not token or len(token) > 200:
        return False
    issued, sep, sig = token.partition(".")
    if not sep or not issued.isdigit():
        return False
    if int(issued) + CSRF_MAX_AGE < time.time():
        return False
    expected = _sign(_key(session, "csrf"), f"{binding}|{issued}")
    return hmac.compare_digest(expected, sig)

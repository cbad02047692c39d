"""What the browser holds: the session cookie's name, and signed CSRF tokens.

- The session cookie (``cf_session``) carries a web session's random id, nothing else: no token,
  no hash, no signature to forge. The session lives on the server (``tokens.start_session``,
  table ``web_session``, which stores only the id's hash), so signing out, revoking the token or
  reaching ``CONSENTFLOW_SESSION_MAX_AGE`` ends it for every copy of the cookie at once, and a
  database dump holds nothing a browser could present.
- CSRF tokens are HMACs under a key derived from the newest instance key (``keys.derive``, label
  ``consentflow-web:csrf``), so a value made for another purpose is never accepted; any key in
  the list (``keys.signing_keys``) verifies, so a key rotation spoils no form already shown. A CSRF
  token is ``TIME.HMAC(binding|TIME)``. For signed-in pages the binding is a random value kept
  in an HttpOnly cookie (signed double submit); for the email-link pages it is the link token
  itself, so those forms need no cookie at all.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time

from sqlmodel import Session

from consentflow.keys import derive, signing_keys

SESSION_COOKIE = "cf_session"
CSRF_COOKIE = "cf_csrf"
CSRF_FIELD = "csrf_token"
#: How long a rendered form stays usable.
CSRF_MAX_AGE = 12 * 3600


def _keys(session: Session, purpose: str) -> list[bytes]:
    """The keys of one use (``csrf``), one per instance key, newest (the one that signs) first."""
    return [derive(key, f"consentflow-web:{purpose}") for key in signing_keys(session)]


def _sign(key: bytes, message: str) -> str:
    """The HMAC of ``message`` under ``key``, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(derive(key, message)).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------- CSRF


def new_csrf_binding() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(session: Session, binding: str, *, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_sign(_keys(session, 'csrf')[0], f'{binding}|{issued}')}"


def check_csrf(session: Session, binding: str | None, token: str | None) -> bool:
    """Whether ``token`` was issued for ``binding`` within ``CSRF_MAX_AGE``."""
    if not binding or not token or len(token) > 200:
        return False
    issued, sep, sig = token.partition(".")
    if not sep or not issued.isdigit():
        return False
    if int(issued) + CSRF_MAX_AGE < time.time():
        return False
    message = f"{binding}|{issued}"
    return any(hmac.compare_digest(_sign(k, message), sig) for k in _keys(session, "csrf"))

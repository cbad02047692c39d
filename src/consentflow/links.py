"""Signed, expiring, single-purpose tokens for the links in consent emails.

A link lets a person act without logging in, so the token is the only proof: it is signed with a
key derived from the instance secret *and the action*, so a renew token can never be replayed as a
revoke token (or the other way round); it expires; and it carries opaque database ids only, never
an email address or external id, because links end up in mail logs and browser histories.

Format: ``base64url(json claims) "." base64url(HMAC-SHA256(action key, claims))``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlmodel import Session

from consentflow import keys
from consentflow.errors import InvalidInput
from consentflow.keys import instance_secret
from consentflow.models import utcnow
from consentflow.settings import get_settings


class LinkAction(StrEnum):
    RENEW = "renew"
    REVOKE = "revoke"  # also the RFC 8058 one-click unsubscribe target
    GRANT = "grant"  # answering a consent request (collection or re-consent)
    PREFERENCES = "preferences"


#: How long a link stays valid unless the caller says otherwise.
DEFAULT_TTL = timedelta(days=45)


class BadLink(InvalidInput):
    """The token is malformed, tampered with, expired or meant for another action."""


@dataclass(frozen=True)
class Link:
    action: LinkAction
    subject_id: int
    purpose_id: int | None
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes, action: LinkAction) -> bytes:
    return keys.derive(secret, f"consentflow-link:{action.value}")


def issue(
    session: Session,
    action: LinkAction,
    subject_id: int,
    purpose_id: int | None = None,
    *,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> str:
    """A token for ``action`` on one subject (and purpose), valid for ``ttl``."""
    expires = int(((now or utcnow()) + ttl).timestamp())
    claims = {"a": action.value, "s": subject_id, "p": purpose_id, "e": expires}
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = keys.derive(_key(instance_secret(session), action), body)
    return f"{body}.{_b64(sig)}"


def url(token: str) -> str:
    """The public URL the web app serves the token at."""
    return f"{get_settings().public_url.rstrip('/')}/l/{token}"


def verify(
    session: Session, token: str, action: LinkAction, *, now: datetime | None = None
) -> Link:
    """The link's claims if ``token`` is genuine, unexpired and for ``action``; else ``BadLink``."""
    body, sep, sig = token.partition(".")
    if not sep or not body or not sig:
        raise BadLink("this link is incomplete: copy the whole link from the email")
    expected = keys.derive(_key(instance_secret(session), action), body)
    # Compare the text, not decoded bytes: lenient base64 decoding would let altered text pass.
    if not hmac.compare_digest(_b64(expected).encode(), sig.encode()):
        raise BadLink("this link is not valid for this action, or it was altered")
    try:
        claims = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise BadLink("this link is damaged: copy the whole link from the email") from None
    expires_at = datetime.fromtimestamp(claims["e"], tz=(now or utcnow()).tzinfo)
    if expires_at <= (now or utcnow()):
        raise BadLink("this link has expired: use the link in a newer email, or ask us for one")
    return Link(LinkAction(claims["a"]), int(claims["s"]), claims.get("p"), expires_at)


def peek_action(token: str) -> LinkAction | None:
    """The action a token claims, unverified: only to choose which page to show."""
    try:
        return LinkAction(json.loads(_unb64(token.partition(".")[0]))["a"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None

"""Signed, expiring, single-purpose tokens for the links in consent emails.

A link lets a person act without logging in, so the token is the only proof: it is signed with a
key derived from the newest instance key *and the action*, so a renew token can never be replayed
as a revoke token (or the other way round); it expires; and it carries opaque database ids only,
never an email address or external id, because links end up in mail logs and browser histories.

Rotation: ``verify`` accepts a signature under any key in the list (``keys.signing_keys``), so a
link issued before a rotation keeps working until it expires (``DEFAULT_TTL`` at most, the
longest any door issues), and one signed by a key since removed from the list is refused.

Format: ``base64url(json claims) "." base64url(HMAC-SHA256(action key, claims))``.

Binding (issue 14): a link that would give consent (``grant``, ``renew``: ``BOUND``) also carries
``c``, the sequence number of the person's latest *choice* for that purpose when it was issued
(``latest_choice``: the last ``grant``, ``refuse``, ``revoke``, ``renew`` or ``import`` event; 0
if none). Requests, expiries and invalidations are not choices. ``superseded`` is true when a
choice recorded since then said no (the consent is ``refused`` or ``withdrawn`` by it): the
person's later no stands, so the link must not give consent. A later yes does not supersede a
link that says yes (pressing "Yes" twice, or renewing after saying yes again, stays harmless).
Links without the binding (issued before it existed) count as issued before every choice: they
still act unless the person's latest choice for the purpose is a no. ``revoke`` and
``preferences`` links are never bound: withdrawing is always allowed, and the preference page
shows the current state.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlmodel import Session, col, func, select

from consentflow import keys
from consentflow.errors import InvalidInput
from consentflow.models import Action, ConsentEvent, State, Subject, utcnow
from consentflow.settings import get_settings


class LinkAction(StrEnum):
    RENEW = "renew"
    REVOKE = "revoke"  # also the RFC 8058 one-click unsubscribe target
    GRANT = "grant"  # answering a consent request (collection or re-consent)
    PREFERENCES = "preferences"
    ERASE = "erase"  # the person asks to be forgotten (confirmed on the page it opens)


#: The links that would give consent: bound to the person's latest choice when issued.
BOUND = frozenset({LinkAction.GRANT, LinkAction.RENEW})
#: The events that record a choice of the person (theirs, or made for them: an agent, an import).
CHOICES = (Action.GRANT, Action.REFUSE, Action.REVOKE, Action.RENEW, Action.IMPORT)
#: The states a choice leaves when it said no.
_SAID_NO = frozenset({State.REFUSED.value, State.WITHDRAWN.value})

#: How long a link stays valid unless the caller says otherwise (no door issues longer ones:
#: keep a retired key in the list at least this long, docs/keys.md).
DEFAULT_TTL = timedelta(days=45)


class BadLink(InvalidInput):
    """The token is malformed, tampered with, expired or meant for another action."""


@dataclass(frozen=True)
class Link:
    action: LinkAction
    subject_id: int
    purpose_id: int | None
    expires_at: datetime
    #: The sequence number of the latest choice when issued (``BOUND`` actions only); None for
    #: other links and for links issued before the binding existed.
    choice: int | None = None


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
    choice: int | None = None,
) -> str:
    """A token for ``action`` on one subject (and purpose), valid for ``ttl``. A ``BOUND`` link
    with a purpose is bound to the latest choice (``choice``: its sequence number, if the caller
    has it at hand; else read here)."""
    expires = int(((now or utcnow()) + ttl).timestamp())
    claims: dict[str, object] = {"a": action.value, "s": subject_id, "p": purpose_id, "e": expires}
    if action in BOUND and purpose_id is not None:
        if choice is None:
            latest = latest_choice(session, subject_id, purpose_id)
            choice = latest[0] if latest else 0
        claims["c"] = choice
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = keys.derive(_key(keys.signing_keys(session)[0], action), body)
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
    # Compare the text, not decoded bytes: lenient base64 decoding would let altered text pass.
    if not any(
        hmac.compare_digest(_b64(keys.derive(_key(key, action), body)).encode(), sig.encode())
        for key in keys.signing_keys(session)
    ):
        raise BadLink("this link is not valid for this action, or it was altered")
    try:
        claims = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise BadLink("this link is damaged: copy the whole link from the email") from None
    expires_at = datetime.fromtimestamp(claims["e"], tz=(now or utcnow()).tzinfo)
    if expires_at <= (now or utcnow()):
        raise BadLink("this link has expired: use the link in a newer email, or ask us for one")
    choice = claims.get("c")
    return Link(
        LinkAction(claims["a"]),
        int(claims["s"]),
        claims.get("p"),
        expires_at,
        int(choice) if choice is not None else None,
    )


def latest_choice(session: Session, subject_id: int, purpose_id: int) -> tuple[int, str] | None:
    """The sequence number and resulting state of the subject's latest choice for the purpose
    (``CHOICES``), or None if there was none. Reads the subject's events through the
    (subject, seq) index, newest first."""
    row = session.exec(
        select(ConsentEvent.seq, ConsentEvent.state)
        .where(
            ConsentEvent.subject_id == subject_id,
            ConsentEvent.purpose_id == purpose_id,
            col(ConsentEvent.action).in_([a.value for a in CHOICES]),
        )
        .order_by(col(ConsentEvent.seq).desc())
        .limit(1)
    ).first()
    return (int(row[0]), str(row[1])) if row is not None else None


def latest_choices(
    session: Session, pairs: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    """``latest_choice``'s sequence number for many (subject, purpose) pairs in one query
    (a sweep issuing a bound link per email); a pair with no choice is left out (0 for
    ``issue``)."""
    wanted = set(pairs)
    if not wanted:
        return {}
    rows = session.exec(
        select(ConsentEvent.subject_id, ConsentEvent.purpose_id, func.max(ConsentEvent.seq))
        .where(
            col(ConsentEvent.subject_id).in_(sorted({s for s, _ in wanted})),
            col(ConsentEvent.action).in_([a.value for a in CHOICES]),
        )
        .group_by(col(ConsentEvent.subject_id), col(ConsentEvent.purpose_id))
    ).all()
    return {(s, p): int(seq) for s, p, seq in rows if (s, p) in wanted}


def superseded(session: Session, link: Link, *, lock: bool = False) -> bool:
    """Whether a later no of the person supersedes ``link``: it would give consent (``BOUND``)
    and a choice recorded after the one it was issued for (any, for an unbound link) said no.

    ``lock``: first lock the subject's row (PostgreSQL; SQLite's writers already hold the
    database), the lock every consent change of the subject takes, so a concurrent choice is
    either seen here or waits until this transaction, which acts on the answer, ends."""
    if link.action not in BOUND or link.purpose_id is None:
        return False
    if lock:
        session.exec(select(Subject.id).where(Subject.id == link.subject_id).with_for_update())
    latest = latest_choice(session, link.subject_id, link.purpose_id)
    if latest is None:
        return False
    seq, state = latest
    return seq > (link.choice or 0) and state in _SAID_NO


def peek_action(token: str) -> LinkAction | None:
    """The action a token claims, unverified: only to choose which page to show."""
    try:
        return LinkAction(json.loads(_unb64(token.partition(".")[0]))["a"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None

"""API tokens: bearer credentials for the web app, each with one scope.

A token is shown once, when it is created, and only its SHA-256 hash is stored, so a database dump
does not reveal usable credentials. Scopes:

- ``admin``: everything.
- ``compliance``: read everything, export, verify the audit trail, the dashboard.
- ``support``: read a subject's record and act on the subject's behalf (recorded as an agent with
  the token's name and a required reason).
- ``system``: one downstream system; may only call the access check and read the reconciliation
  feed, and only for the purposes that system is registered for.
- ``metrics``: a Prometheus scraper; may only read ``GET /metrics`` (system names and counts,
  nothing about a person) and ask who it is (``/api/v1/me``).

Web sessions (``web_session``) are the browser's form of a token: signing in with a token starts
one (``start_session``), and the cookie carries only the session's random id (256 bits), whose
SHA-256 hash is all the database keeps. A session admits its caller (``session_lookup``) only
while it is not revoked, not past ``expires_at`` (the server's clock decides, whatever the
cookie's lifetime in the browser) and its token is active; ``end_session`` (sign-out) and
``revoke`` (the token: every session of it, in the same transaction) end it at once. So a
database dump holds no usable session, and a copied cookie dies with its session. Signing in and
signing out are audited (``session.started``, ``session.ended``) under the token's name, never
the session id; a refused sign-in is not (an unknown token names nobody, and a flood of wrong
tokens must not grow the trail).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from consentflow import audit, systems
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.models import ActorType, ApiToken, System, WebSession, utcnow

PREFIX = "cf_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,99}$")
#: ``last_used_at`` is refreshed at most this often, so checks do not write on every call.
TOUCH_INTERVAL = timedelta(minutes=10)


class Scope(StrEnum):
    ADMIN = "admin"
    COMPLIANCE = "compliance"
    SUPPORT = "support"
    SYSTEM = "system"
    METRICS = "metrics"


@dataclass(frozen=True)
class TokenInfo:
    """Who a verified token belongs to."""

    id: int
    name: str
    scope: Scope
    system_id: int | None = None
    system: str | None = None
    token_hash: str = ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    session: Session, name: str, scope: str, *, system: str | None = None
) -> tuple[TokenInfo, str]:
    """A new token; returns its info and the token itself, which is never shown again."""
    name = name.strip()
    if not _NAME.match(name):
        raise InvalidInput(
            f"bad token name {name!r}: 1 to 100 letters, digits, spaces, '_', '.', '@', '-'"
        )
    try:
        scope_ = Scope(scope)
    except ValueError:
        choices = ", ".join(Scope)
        raise InvalidInput(f"unknown scope {scope!r}: use one of {choices}") from None
    system_id = None
    if scope_ is Scope.SYSTEM:
        if not system:
            raise InvalidInput("a system token needs --system NAME (the system it acts for)")
        system_id = systems.get(session, system).id
    elif system:
        raise InvalidInput(f"--system applies to system tokens only, not to scope {scope_.value}")
    active = session.exec(
        select(ApiToken.id).where(ApiToken.name == name, col(ApiToken.revoked_at).is_(None))
    ).first()
    if active is not None:
        raise Conflict(f"an active token named {name!r} exists already: revoke it or pick another")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, scope=scope_.value, system_id=system_id, token_hash=hash_token(token))
    session.add(row)
    session.flush()
    assert row.id is not None
    audit.record(
        session,
        "token.created",
        actor_type=ActorType.AGENT.value,
        actor=name,
        detail={"scope": scope_.value, "system": system},
    )
    return TokenInfo(row.id, name, scope_, system_id, system, row.token_hash), token


def lookup(session: Session, token_hash: str, *, now: datetime | None = None) -> TokenInfo | None:
    """The active token with this hash, or None; refreshes ``last_used_at`` now and then."""
    row = session.exec(
        select(ApiToken, System.name)
        .outerjoin(System, col(System.id) == ApiToken.system_id)
        .where(ApiToken.token_hash == token_hash, col(ApiToken.revoked_at).is_(None))
    ).first()
    if row is None:
        return None
    return _info(session, *row, now=now or utcnow())


def _info(
    session: Session, token: ApiToken, system_name: str | None, *, now: datetime
) -> TokenInfo:
    if token.last_used_at is None or now - token.last_used_at > TOUCH_INTERVAL:
        token.last_used_at = now
        session.add(token)
    assert token.id is not None
    return TokenInfo(
        token.id, token.name, Scope(token.scope), token.system_id, system_name, token.token_hash
    )


def verify(session: Session, token: str) -> TokenInfo | None:
    """The active token matching ``token`` (as presented by a client), or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    return lookup(session, hash_token(token))


def revoke(session: Session, name: str) -> int:
    """Revoke every active token named ``name``; returns how many."""
    rows = session.exec(
        select(ApiToken).where(ApiToken.name == name, col(ApiToken.revoked_at).is_(None))
    ).all()
    if not rows:
        raise NotFound(f"no active token named {name!r}: see `consentflow token list`")
    now = utcnow()
    for row in rows:
        row.revoked_at = now
        session.add(row)
    session.flush()
    ids = [row.id for row in rows]
    session.execute(
        update(WebSession)
        .where(col(WebSession.token_id).in_(ids), col(WebSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    audit.record(
        session,
        "token.revoked",
        actor_type=ActorType.AGENT.value,
        actor=name,
        detail={"count": len(rows)},
    )
    return len(rows)


def list_all(session: Session) -> list[dict[str, Any]]:
    rows = session.exec(
        select(ApiToken, System.name)
        .outerjoin(System, col(System.id) == ApiToken.system_id)
        .order_by(col(ApiToken.name), col(ApiToken.id))
    ).all()
    return [
        {
            "name": t.name,
            "scope": t.scope,
            "system": system,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }
        for t, system in rows
    ]


# ------------------------------------------------------------------------------- web sessions


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(session: Session, info: TokenInfo, max_age: int) -> str:
    """A new web session for ``info``'s token, ending ``max_age`` seconds from now; returns the
    random id for the cookie (never stored). Sessions that ended are pruned on the way."""
    now = utcnow()
    session.execute(
        delete(WebSession).where(
            or_(col(WebSession.expires_at) < now, col(WebSession.revoked_at).is_not(None))
        )
    )
    session_id = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=_session_hash(session_id),
            token_id=info.id,
            created_at=now,
            expires_at=now + timedelta(seconds=max_age),
            last_seen_at=now,
        )
    )
    session.flush()
    audit.record(
        session,
        "session.started",
        actor_type=ActorType.AGENT.value,
        actor=info.name,
        detail={"scope": info.scope.value, "max_age_s": max_age},
    )
    return session_id


def session_lookup(
    session: Session, session_id: str, *, now: datetime | None = None
) -> TokenInfo | None:
    """The token of a live web session (not revoked, not expired, token active), or None;
    refreshes ``last_seen_at`` (and the token's ``last_used_at``) now and then."""
    if not session_id or len(session_id) > 100:
        return None
    now = now or utcnow()
    row = session.exec(
        select(WebSession, ApiToken, System.name)
        .join(ApiToken, col(ApiToken.id) == WebSession.token_id)
        .outerjoin(System, col(System.id) == ApiToken.system_id)
        .where(
            col(WebSession.id_hash) == _session_hash(session_id),
            col(WebSession.revoked_at).is_(None),
            col(WebSession.expires_at) > now,
            col(ApiToken.revoked_at).is_(None),
        )
    ).first()
    if row is None:
        return None
    web, token, system_name = row
    if now - web.last_seen_at > TOUCH_INTERVAL:
        web.last_seen_at = now
        session.add(web)
    return _info(session, token, system_name, now=now)


def end_session(session: Session, session_id: str) -> bool:
    """Sign-out: revoke the web session with this id; whether there was a live one."""
    if not session_id or len(session_id) > 100:
        return False
    row = session.exec(
        select(WebSession, ApiToken.name)
        .join(ApiToken, col(ApiToken.id) == WebSession.token_id)
        .where(
            col(WebSession.id_hash) == _session_hash(session_id),
            col(WebSession.revoked_at).is_(None),
        )
    ).first()
    if row is None:
        return False
    web, name = row
    web.revoked_at = utcnow()
    session.add(web)
    session.flush()
    audit.record(session, "session.ended", actor_type=ActorType.AGENT.value, actor=name)
    return True

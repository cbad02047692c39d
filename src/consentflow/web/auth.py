"""Who is calling: one database session per request, bearer tokens, session cookies, scopes.

Every route that needs a caller declares ``Depends(Require(...scopes))``; admin is always allowed.
A bearer token in ``Authorization`` always works (scripts); the sign-in cookie set by the login page
works for reading anywhere and for the HTML forms, which carry their own CSRF token. API calls that
change something need the bearer header: a cookie alone never authorises an unsafe API request.
The cookie names a server-side web session (``tokens.session_lookup``): it admits its caller only
while the session is live and its token active, checked on every request.

A route that only reads takes ``ReadSession`` and ``Depends(SCOPE.reading)`` instead: its unit of
work is read-only (``db.session_scope(readonly=True)``: on SQLite it takes no write lock, so checks
and dashboards never queue behind a writer). Token and session lookups refresh ``last_used_at``
and ``last_seen_at`` now and then (``tokens.TOUCH_INTERVAL``); on a read-only request that
refresh is taken out of the request's unit of work and committed in a short one of its own, so
the request itself writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from consentflow import db, tokens
from consentflow.models import ApiToken, WebSession
from consentflow.tokens import Scope, TokenInfo
from consentflow.web import security


def _session() -> Iterator[Session]:
    with db.session_scope() as session:
        yield session


def _read_session() -> Iterator[Session]:
    with db.session_scope(readonly=True) as session:
        yield session


#: The request's single unit of work: committed when the route returns, rolled back if it raises.
DbSession = Annotated[Session, Depends(_session, scope="function")]
#: The unit of work of a route that only reads (no write lock on SQLite); pair it with
#: ``Depends(SCOPE.reading)`` so that authentication shares it.
ReadSession = Annotated[Session, Depends(_read_session, scope="function")]


class AuthError(Exception):
    """401 (who are you?) or 403 (not with this token)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


#: Declares the bearer scheme in the OpenAPI schema; ``authenticate`` does the actual checking.
_BEARER = HTTPBearer(auto_error=False, description="An API token: consentflow token create")

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _touch_apart(
    session: Session, info: TokenInfo | None, again: Callable[[Session], object]
) -> TokenInfo | None:
    """Keep a read-only unit of work read-only: if the lookup refreshed ``last_used_at`` or
    ``last_seen_at`` (at most once per ``tokens.TOUCH_INTERVAL``), drop those pending changes and
    make them again (``again``: the same lookup) in a short unit of work of its own instead."""
    touched = [row for row in session.dirty if isinstance(row, ApiToken | WebSession)]
    if info is None or not touched:
        return info
    for row in touched:
        session.expire(row)  # discards the unflushed change
    with db.session_scope() as own:
        again(own)
    return info


def authenticate(request: Request, session: Session, *, readonly: bool = False) -> TokenInfo | None:
    """The caller's token, from the bearer header or the sign-in cookie; None if neither.

    ``readonly``: ``session`` is a read-only unit of work, which the lookup must not write to.
    """
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(401, "malformed Authorization header: use 'Bearer TOKEN'")
        info = tokens.verify(session, value.strip())
        if info is None:
            raise AuthError(401, "unknown or revoked token")
        if not readonly:
            return info
        return _touch_apart(session, info, lambda own: tokens.lookup(own, info.token_hash))
    cookie = request.cookies.get(security.SESSION_COOKIE)
    if not cookie:
        return None
    if request.method not in _SAFE and request.url.path.startswith("/api/"):
        return None
    found = tokens.session_lookup(session, cookie)
    if not readonly:
        return found
    return _touch_apart(session, found, lambda own: tokens.session_lookup(own, cookie))


class Require:
    """A dependency that admits tokens of the given scopes (admin always)."""

    def __init__(self, *scopes: Scope) -> None:
        self.scopes = frozenset({Scope.ADMIN, *scopes})
        #: The same check for a route that only reads: it shares the route's ``ReadSession``.
        self.reading = _RequireReading(self)

    def __call__(
        self,
        request: Request,
        session: DbSession,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
    ) -> TokenInfo:
        return self.admit(authenticate(request, session))

    def admit(self, info: TokenInfo | None) -> TokenInfo:
        if info is None:
            raise AuthError(401, "authentication required: send 'Authorization: Bearer TOKEN'")
        if info.scope not in self.scopes:
            allowed = ", ".join(sorted(s.value for s in self.scopes))
            raise AuthError(403, f"a {info.scope.value} token may not do this (needs {allowed})")
        return info

    def __repr__(self) -> str:
        return f"Require({', '.join(sorted(self.scopes))})"


class _RequireReading(Require):
    """``Require`` for a read-only route (``Require(...).reading``): the same scopes, checked
    in the route's ``ReadSession``."""

    def __init__(self, require: Require) -> None:
        self.scopes = require.scopes
        self.reading = self

    def __call__(
        self,
        request: Request,
        session: ReadSession,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
    ) -> TokenInfo:
        return self.admit(authenticate(request, session, readonly=True))

    def __repr__(self) -> str:
        return f"{super().__repr__()}.reading"


READ = Require(Scope.COMPLIANCE, Scope.SUPPORT)
ADMIN = Require()
ACT = Require(Scope.SUPPORT)
COMPLIANCE = Require(Scope.COMPLIANCE)
#: ``GET /metrics``: a scraper's own ``metrics`` token, or one that may read everything anyway.
METRICS = Require(Scope.METRICS, Scope.COMPLIANCE)
CHECK = Require(Scope.COMPLIANCE, Scope.SUPPORT, Scope.SYSTEM)
FEED = Require(Scope.COMPLIANCE, Scope.SYSTEM)
#: Every scope: who am I (``/api/v1/me``).
ANY = Require(*Scope)

Caller = TokenInfo

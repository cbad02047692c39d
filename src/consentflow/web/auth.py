"""Who is calling: one database session per request, bearer tokens, session cookies, scopes.

Every route that needs a caller declares ``Depends(Require(...scopes))``; admin is always allowed.
A bearer token in ``Authorization`` always works (scripts); the sign-in cookie set by the login page
works for reading anywhere and for the HTML forms, which carry their own CSRF token. API calls that
change something need the bearer header: a cookie alone never authorises an unsafe API request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from consentflow import db, tokens
from consentflow.settings import get_settings
from consentflow.tokens import Scope, TokenInfo
from consentflow.web import security


def _session() -> Iterator[Session]:
    with db.session_scope() as session:
        yield session


#: The request's single unit of work: committed when the route returns, rolled back if it raises.
DbSession = Annotated[Session, Depends(_session, scope="function")]


class AuthError(Exception):
    """401 (who are you?) or 403 (not with this token)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


#: Declares the bearer scheme in the OpenAPI schema; ``authenticate`` does the actual checking.
_BEARER = HTTPBearer(auto_error=False, description="An API token: consentflow token create")

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate(request: Request, session: Session) -> TokenInfo | None:
    """The caller's token, from the bearer header or the sign-in cookie; None if neither."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(401, "malformed Authorization header: use 'Bearer TOKEN'")
        info = tokens.verify(session, value.strip())
        if info is None:
            raise AuthError(401, "unknown or revoked token")
        return info
    cookie = request.cookies.get(security.SESSION_COOKIE)
    if not cookie:
        return None
    if request.method not in _SAFE and request.url.path.startswith("/api/"):
        return None
    token_hash = security.read_session_cookie(session, cookie, get_settings().session_max_age)
    return tokens.lookup(session, token_hash) if token_hash else None


class Require:
    """A dependency that admits tokens of the given scopes (admin always)."""

    def __init__(self, *scopes: Scope) -> None:
        self.scopes = frozenset({Scope.ADMIN, *scopes})

    def __call__(
        self,
        request: Request,
        session: DbSession,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
    ) -> TokenInfo:
        info = authenticate(request, session)
        if info is None:
            raise AuthError(401, "authentication required: send 'Authorization: Bearer TOKEN'")
        if info.scope not in self.scopes:
            allowed = ", ".join(sorted(s.value for s in self.scopes))
            raise AuthError(403, f"a {info.scope.value} token may not do this (needs {allowed})")
        return info

    def __repr__(self) -> str:
        return f"Require({', '.join(sorted(self.scopes))})"


READ = Require(Scope.COMPLIANCE, Scope.SUPPORT)
ADMIN = Require()
ACT = Require(Scope.SUPPORT)
COMPLIANCE = Require(Scope.COMPLIANCE)
CHECK = Require(Scope.COMPLIANCE, Scope.SUPPORT, Scope.SYSTEM)
FEED = Require(Scope.COMPLIANCE, Scope.SYSTEM)
ANY = Require(Scope.COMPLIANCE, Scope.SUPPORT, Scope.SYSTEM)

Caller = TokenInfo

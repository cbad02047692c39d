"""Sign-in for people at a browser: the form, the session cookie, sign-out.

A token typed once starts a server-side web session (``tokens.start_session``); the HttpOnly
cookie carries only its random id. Signing out revokes that session on the server, so a copy of
the cookie stops working too; the forms carry a CSRF token bound to a cookie. ``next`` is only
ever a local path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from consentflow import tokens
from consentflow.settings import get_settings
from consentflow.web import security
from consentflow.web.auth import DbSession
from consentflow.web.templating import render, secure_cookies

router = APIRouter(include_in_schema=False)

FormText = Annotated[str | None, Form(max_length=1000)]


def _safe_next(value: str | None) -> str:
    """Only a local path: never an absolute URL (open redirect) or a scheme-relative one."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/dashboard"
    return value


def login_page(
    request: Request,
    *,
    status: int = 200,
    message: str | None = None,
    next_url: str | None = None,
    session: Session | None = None,
) -> Response:
    """The sign-in form, with a CSRF token bound to a fresh or existing CSRF cookie.

    Pass the request's ``session`` when there is one: a second transaction would wait for the
    first on SQLite.
    """
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    if session is not None:
        csrf = security.csrf_token(session, binding)
    else:
        from consentflow import db

        with db.session_scope() as own:
            csrf = security.csrf_token(own, binding)
    response = render(
        request,
        "login.html",
        {"message": message, "csrf": csrf, "next": _safe_next(next_url), "signed_in": False},
        status_code=status,
    )
    response.set_cookie(
        security.CSRF_COOKIE,
        binding,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(),
        path="/",
    )
    return response


@router.get("/", response_class=RedirectResponse)
def index() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    session: DbSession,
    next: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    return login_page(request, next_url=next, session=session)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: DbSession,
    token: Annotated[str, Form(max_length=300)] = "",
    csrf_token: FormText = None,
    next: FormText = None,
) -> Response:
    """Exchange a token typed once for a server-side session, named by an HttpOnly cookie."""
    binding = request.cookies.get(security.CSRF_COOKIE)
    if not security.check_csrf(session, binding, csrf_token):
        return login_page(
            request,
            status=403,
            message="The form expired; please try again.",
            next_url=next,
            session=session,
        )
    info = tokens.verify(session, token.strip())
    if info is None:
        return login_page(
            request,
            status=401,
            message="That token is unknown or revoked.",
            next_url=next,
            session=session,
        )
    max_age = get_settings().session_max_age
    session_id = tokens.start_session(session, info, max_age)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        session_id,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(),
        path="/",
    )
    return response


@router.post("/logout", response_class=RedirectResponse)
def logout(request: Request, session: DbSession, csrf_token: FormText = None) -> Response:
    """End the session on the server (every copy of the cookie), then forget the cookie."""
    if not security.check_csrf(session, request.cookies.get(security.CSRF_COOKIE), csrf_token):
        return render(
            request,
            "message.html",
            {"title": "Not signed out", "message": "The form expired; please try again."},
            status_code=403,
        )
    session_id = request.cookies.get(security.SESSION_COOKIE)
    if session_id:
        tokens.end_session(session, session_id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response

"""What every workspace action page shares: the signed-in caller, the CSRF token of its forms,
the confirmation step, and the actor its changes are recorded under.

The pattern (``web.pages.actions`` describes it whole):

- ``page`` renders a staff page (English only, like the dashboard) with the caller and a CSRF
  token bound to the ``cf_csrf`` cookie (signed double submit, ``web.security``), setting that
  cookie when the browser has none yet;
- ``csrf_ok`` checks a form's token (a request with a bearer header, which no browser adds by
  itself, needs none); ``refused`` is the 403 page a missing or wrong one gets (nothing is
  changed);
- ``confirm`` is the one confirmation step: what will happen, the form's fields carried over
  as hidden inputs, and one button that sends them again with ``confirm=yes``;
- ``staff_actor`` is who the ledger records: an agent named after the signed-in token, through
  the support channel, with the token in the evidence (as the API records a support agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from consentflow import i18n
from consentflow.actors import Actor
from consentflow.models import ActorType, Channel
from consentflow.tokens import TokenInfo
from consentflow.web import security
from consentflow.web.templating import render, secure_cookies

#: The value of a form's ``confirm`` field that makes it act (anything else: confirm first).
CONFIRMED = "yes"


def csrf_binding(request: Request) -> str:
    """The browser's CSRF binding (its ``cf_csrf`` cookie), or a fresh one to set."""
    return request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()


def page(
    request: Request,
    session: Session,
    caller: TokenInfo,
    template: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> HTMLResponse:
    """A workspace page: the caller, a CSRF token for its forms (and the cookie it is bound to)."""
    binding = csrf_binding(request)
    full = {
        **context,
        "caller": caller,
        "signed_in": True,
        "csrf": security.csrf_token(session, binding),
    }
    response = render(request, template, full, status_code=status_code, locale=i18n.DEFAULT)
    if request.cookies.get(security.CSRF_COOKIE) != binding:
        response.set_cookie(
            security.CSRF_COOKIE,
            binding,
            httponly=True,
            samesite="lax",
            secure=secure_cookies(),
            path="/",
        )
    return response


def csrf_ok(request: Request, session: Session, token: str | None) -> bool:
    """Whether a form's CSRF token was made for this browser's binding, and recently.

    A request authenticated by its ``Authorization`` header (a script with a bearer token,
    checked by ``auth.Require`` before this runs) needs none: no browser sends that header by
    itself, so no other site can make one; the sign-in cookie is what a forged form would ride."""
    if request.headers.get("authorization"):
        return True
    return security.check_csrf(session, request.cookies.get(security.CSRF_COOKIE), token)


def refused(request: Request, session: Session, caller: TokenInfo, back: str) -> HTMLResponse:
    """The 403 page of a form without a valid CSRF token: nothing was changed."""
    return page(
        request,
        session,
        caller,
        "action_done.html",
        {
            "title": "Nothing was changed",
            "message": "The form expired or did not come from this site, so nothing was "
            "changed. Open the page again and repeat the action.",
            "back": back,
            "error": True,
        },
        status_code=403,
    )


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation step shows and sends again."""

    title: str
    #: The action's URL, which the confirm button posts to.
    action: str
    #: (label, value) pairs: what will happen.
    facts: list[tuple[str, str]]
    #: The form's fields, sent again as hidden inputs with ``confirm=yes``.
    fields: dict[str, str]
    button: str
    back: str
    note: str | None = None
    danger: bool = False


def confirm(
    request: Request, session: Session, caller: TokenInfo, what: Confirmation
) -> HTMLResponse:
    """The confirmation step of an action (changes nothing)."""
    return page(request, session, caller, "action_confirm.html", {"c": what})


def staff_actor(caller: TokenInfo, reason: str | None = None) -> Actor:
    """Who the ledger records for a change made from the workspace: an agent named after the
    signed-in token, through the support channel, with the token in the evidence."""
    return Actor(
        ActorType.AGENT,
        Channel.SUPPORT,
        name=caller.name,
        reason=reason,
        evidence={"via_token": caller.name},
    )

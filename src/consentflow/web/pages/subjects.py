"""The workspace's People pages: find a person (``GET /subjects?q=``) and see everything the
record holds about them (``GET /subjects/{subject}``). Rendering only: ``lookup`` finds and
gathers, ``views`` shapes (the same models as ``GET /api/v1/subjects``).

Signed-in support, compliance and admin (``READ``, as the API's subject reads); a system token
is refused (403). Staff pages are English, like the dashboard. The search answers its own form
with the result: 422 with the form and one line naming what is wrong with the query, 404 "No
such subject" with the form when nothing matches (the query is not repeated on that page: it may
be an address). The drill-down takes an external id or an erased subject's tombstone (404 for
an unknown one, through ``web.errors``); an erased subject shows as a tombstone, with no record
link and no receipt. Neither page shows an email address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from consentflow import i18n, lookup
from consentflow.errors import InvalidInput, NotFound
from consentflow.tokens import Scope, TokenInfo
from consentflow.views import SubjectMatchOut, SubjectOverviewOut
from consentflow.web import security
from consentflow.web.api.subject_search import SubjectOrTombstone
from consentflow.web.auth import READ, ReadSession
from consentflow.web.templating import render, secure_cookies

router = APIRouter(include_in_schema=False)

#: Who may record a change on a caller's behalf from the drill-down (``/subjects/{id}/record``).
RECORDERS = frozenset({Scope.ADMIN, Scope.COMPLIANCE, Scope.SUPPORT})


def _page(
    request: Request,
    session: ReadSession,
    caller: TokenInfo,
    template: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    """A staff page with the caller and the sign-out form's CSRF token (its cookie set when the
    browser has none yet)."""
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    full = {
        **context,
        "caller": caller,
        "signed_in": True,
        "csrf": security.csrf_token(session, binding),
        "when": _when,
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


def _when(ts: datetime | None) -> str:
    """A time as the workspace shows it: to the minute, UTC (the pages say so)."""
    return ts.strftime("%Y-%m-%d %H:%M") if ts else "-"


@router.get("/subjects", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(READ.reading)],
    q: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    """The search form, and what the query found."""
    matches: list[SubjectMatchOut] | None = None
    problem, status = None, 200
    if q is not None and q.strip():
        try:
            matches = [SubjectMatchOut.of(m) for m in lookup.search(session, q)]
        except NotFound:  # before InvalidInput, of which it is a kind
            problem, status = "No such subject: nothing matches that query.", 404
        except InvalidInput as exc:
            problem, status = str(exc).removeprefix("q: "), 422
    context = {"q": q or "", "matches": matches, "problem": problem}
    return _page(request, session, caller, "subjects.html", context, status)


@router.get("/subjects/{subject}", response_class=HTMLResponse)
def subject_page(
    request: Request,
    subject: SubjectOrTombstone,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(READ.reading)],
) -> Response:
    """Everything the record holds about one subject."""
    o = SubjectOverviewOut.of(lookup.overview(session, subject))
    context = {"o": o, "may_record": caller.scope in RECORDERS and not o.erased}
    return _page(request, session, caller, "subject.html", context)

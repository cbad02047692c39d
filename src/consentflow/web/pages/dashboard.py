"""The compliance dashboard page and its CSV exports: rendering only.

The figures are ``consentflow.reports`` (aggregate SQL, the same ``Table`` for page and CSV); the
delivery health they show is the delivery engine's, passed in as ``web.delivery_ops.health``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from consentflow import reports, timeutil
from consentflow.errors import NotFound
from consentflow.settings import get_settings
from consentflow.tokens import TokenInfo
from consentflow.web import delivery_ops, security
from consentflow.web.auth import COMPLIANCE, ReadSession
from consentflow.web.templating import render, secure_cookies

router = APIRouter(include_in_schema=False)


def _page_csrf(request: Request, session: Session) -> tuple[str | None, str | None]:
    """A CSRF token for the sign-out form when the caller came in through the cookie."""
    if request.cookies.get(security.SESSION_COOKIE) is None:
        return None, None
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    return binding, security.csrf_token(session, binding)


@dataclass(frozen=True)
class _Cell:
    text: str
    href: str | None = None
    numeric: bool = False


def _cell(value: Any) -> _Cell:
    if value is None:
        return _Cell("-")
    if isinstance(value, reports.Link):
        return _Cell(value.text, value.href)
    if isinstance(value, datetime):
        # The dashboard's cells are to the minute, without the zone (the page says its times are
        # UTC): narrower than ``timeutil.display``, kept so the tables stay compact.
        return _Cell(value.strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _Cell(f"{value:g}" if isinstance(value, float) else str(value), numeric=True)
    return _Cell(str(value))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
) -> Response:
    """The state of consent and of its propagation, on one page."""
    data = reports.build(session, health=delivery_ops.health)
    binding, csrf = _page_csrf(request, session)
    response = render(
        request,
        "dashboard.html",
        {
            "d": data,
            "caller": caller,
            "signed_in": True,
            "csrf": csrf,
            "prefect_ui": get_settings().prefect_ui_url,
            "cell": _cell,
        },
    )
    if binding and not request.cookies.get(security.CSRF_COOKIE):
        response.set_cookie(
            security.CSRF_COOKIE, binding, httponly=True, samesite="lax", secure=secure_cookies()
        )
    return response


@router.get("/dashboard/{name}.csv")
def dashboard_csv(
    name: Annotated[str, Path(max_length=64)],
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
) -> Response:
    """One dashboard table as CSV."""
    found = reports.table(session, name, health=delivery_ops.health)
    if found is None:
        raise NotFound(f"no dashboard table {name!r}: use one of {', '.join(reports.TABLES)}")
    filename = f"consentflow-{name}-{timeutil.stamp()}.csv"
    return Response(
        found.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

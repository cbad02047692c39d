"""The compliance dashboard page and its CSV exports: rendering only.

The figures are ``consentflow.reports`` (aggregate SQL, the same ``Table`` for page and CSV); the
delivery health they show, and its verdict, are the delivery engine's (the CLI's and the API's
too), passed in as ``web.delivery_ops.health``.

The trends' range is a GET form: ``since`` and ``until`` (``YYYY-MM-DD``; the last 90 days by
default) and ``measure`` (grants, withdrawals, expiries: what the per-purpose and per-channel
series count). A bad value is answered 422 with the page over the default range and one line
saying what is wrong (never a 500); the CSV exports take the same parameters and answer a bad
one with the API's 422 problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from consentflow import reports, timeutil
from consentflow.errors import InvalidInput, NotFound
from consentflow.models import utcnow
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
    #: A judged cell's level (ok, warning, critical), shown with a symbol and a colour.
    level: str | None = None


def _cell(value: Any, href: str | None = None) -> _Cell:
    if value is None:
        return _Cell("-")
    if isinstance(value, reports.Link):
        return _Cell(value.text, value.href)
    if isinstance(value, reports.Flag):
        return _Cell(value.text, level=value.level)
    if isinstance(value, datetime):
        # The dashboard's cells are to the minute, without the zone (the page says its times are
        # UTC): narrower than ``timeutil.display``, kept so the tables stay compact.
        return _Cell(value.strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return _Cell(text, href, numeric=True)
    return _Cell(str(value))


Since = Annotated[str | None, Query(max_length=32, description="First day, YYYY-MM-DD.")]
Until = Annotated[str | None, Query(max_length=32, description="Last day, YYYY-MM-DD.")]
Measure = Annotated[str, Query(max_length=32, description="grants, withdrawals or expiries.")]


def _window(
    since: str | None, until: str | None, measure: str, now: datetime
) -> tuple[reports.Range, str]:
    if measure not in reports.MEASURES:
        raise InvalidInput(f"measure: use one of {', '.join(reports.MEASURES)}")
    return reports.parse_range(since, until, now), measure


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    since: Since = None,
    until: Until = None,
    measure: Measure = "withdrawals",
) -> Response:
    """The state of consent and of its propagation, on one page; the trends over a range."""
    now = utcnow()
    problem = None
    try:
        window, measure = _window(since, until, measure, now)
    except InvalidInput as exc:
        problem = str(exc)
        window, measure = reports.default_range(now), "withdrawals"
    data = reports.build(session, now, health=delivery_ops.health, window=window, measure=measure)
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
            "problem": problem,
            "asked": {"since": since or "", "until": until or ""},
            "measures": reports.MEASURES,
            "max_days": reports.MAX_RANGE_DAYS,
            "today": now.date().isoformat(),
        },
        status_code=422 if problem else 200,
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
    since: Since = None,
    until: Until = None,
    measure: Measure = "withdrawals",
) -> Response:
    """One dashboard table as CSV (the trends over ``since``..``until``, as on the page)."""
    now = utcnow()
    window, measure = _window(since, until, measure, now)
    found = reports.table(
        session, name, now, health=delivery_ops.health, window=window, measure=measure
    )
    if found is None:
        raise NotFound(f"no dashboard table {name!r}: use one of {', '.join(reports.TABLES)}")
    filename = f"consentflow-{name}-{timeutil.stamp()}.csv"
    return Response(
        found.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

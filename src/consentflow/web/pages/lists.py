"""The workspace's Lists pages: the people behind each dashboard number, and their export.

- ``GET /lists``: the lists there are (``reports.cohorts``).
- ``GET /lists/{cohort}``: a filter form (GET parameters: the API's names), one keyset page of
  rows in a scrolling box, a "Next page" link carrying the cursor; each row links to the person
  (``/subjects/{subject}``).
- ``GET /lists/{cohort}.csv`` and ``.jsonl``: the whole list, streamed and audited exactly as
  the API's export (``web.api.lists.start_export``), for the signed-in caller.

Rendering only. Who may: compliance, support and admin read the lists (``READ``); exports are
compliance and admin only (a support agent gets 403). A system token is refused (403; it has
the API). Bad filters answer 422 with the form and one line naming the field. Staff pages are
English, like the dashboard; no page shows an email address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from consentflow import timeutil
from consentflow.actors import Actor
from consentflow.errors import InvalidInput
from consentflow.models import ActorType, Channel
from consentflow.reports import cohorts
from consentflow.reports.cohorts import Cohort
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.api.lists import start_export
from consentflow.web.auth import READ, ReadSession, Require
from consentflow.web.pages import _staff

router = APIRouter(include_in_schema=False)

#: Exports of cohorts from the workspace: compliance (and admin), never support.
EXPORT = Require(Scope.COMPLIANCE)
#: The filter form's fields, in the order shown.
_FORM = (
    "purpose", "state", "action", "channel", "locale", "version", "kind", "days", "asked",
    "status",
)  # fmt: skip
#: The time filters and their labels.
_FORM_TIMES = {
    "since": "From (inclusive)",
    "until": "To (exclusive)",
    "due_since": "Deadline from (inclusive)",
    "due_until": "Deadline before (exclusive)",
}
_TEXT = Annotated[str | None, Query(max_length=200)]


def _raw(request: Request) -> dict[str, str | None]:
    """The filter parameters as given (blank: any)."""
    names = {*_FORM, *_FORM_TIMES, "system"}
    return {k: v for k, v in request.query_params.items() if k in names}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


@router.get("/lists", response_class=HTMLResponse)
def lists_index_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(READ.reading)],
) -> Response:
    """The lists there are."""
    context = {"definitions": list(cohorts.DEFINITIONS.values())}
    return _staff.page(request, session, caller, "lists.html", context)


def _export(
    request: Request,
    session: ReadSession,
    cohort: Cohort,
    caller: TokenInfo,
    fmt: Literal["csv", "jsonl"],
    include: str | None,
) -> StreamingResponse:
    filters = cohorts.parse_filters(_raw(request))
    actor = Actor(ActorType.AGENT, Channel.SUPPORT, name=f"web:{caller.name}")
    filename = f"consentflow-{cohort.value}-{timeutil.stamp()}.{fmt}"
    return start_export(session, cohort, filters, caller, actor, fmt, include, filename)


_Include = Annotated[Literal["email"] | None, Query()]


@router.get("/lists/{cohort}.csv")
def list_csv(
    request: Request,
    cohort: Cohort,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(EXPORT.reading)],
    include: _Include = None,
) -> StreamingResponse:
    """The whole list as CSV, streamed and audited (as the API's export)."""
    return _export(request, session, cohort, caller, "csv", include)


@router.get("/lists/{cohort}.jsonl")
def list_jsonl(
    request: Request,
    cohort: Cohort,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(EXPORT.reading)],
    include: _Include = None,
) -> StreamingResponse:
    """The whole list as JSON Lines, streamed and audited (as the API's export)."""
    return _export(request, session, cohort, caller, "jsonl", include)


@router.get("/lists/{cohort}", response_class=HTMLResponse)
def list_page(
    request: Request,
    cohort: Annotated[Cohort, Path()],
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(READ.reading)],
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=cohorts.MAX_LIMIT)] = cohorts.DEFAULT_LIMIT,
) -> Response:
    """The filter form and one page of the list."""
    definition = cohorts.DEFINITIONS[cohort]
    raw = _raw(request)
    problem, status = None, 200
    rows: list[dict[str, Any]] = []
    next_url = None
    try:
        filters = cohorts.parse_filters(raw)
        q = cohorts.prepare(session, cohort, filters)
        after = cohorts.decode_cursor(cohort, cursor) if cursor else None
        page = cohorts.read_page(session, cohort, q, after, limit)
        rows = page.rows
        if page.next_key is not None:
            given = {k: v for k, v in raw.items() if v}
            given["cursor"] = cohorts.encode_cursor(cohort, page.next_key)
            if limit != cohorts.DEFAULT_LIMIT:
                given["limit"] = str(limit)
            next_url = f"/lists/{cohort.value}?{urlencode(given)}"
    except InvalidInput as exc:
        problem, status = str(exc), 422
    given_qs = urlencode({k: v for k, v in raw.items() if v})
    context = {
        "d": definition,
        "columns": definition.columns,
        "rows": rows,
        "cell": _cell,
        "raw": raw,
        "form": [n for n in _FORM if n in definition.takes],
        "times": {n: label for n, label in _FORM_TIMES.items() if n in definition.takes},
        "system_filter": "system" in definition.takes,
        "choices": cohorts.CHOICES,
        "problem": problem,
        "next_url": next_url,
        "first_page": cursor is None,
        "export_qs": ("?" + given_qs) if given_qs else "",
        "may_export": caller.scope in EXPORT.scopes,
    }
    return _staff.page(request, session, caller, "list.html", context, status)

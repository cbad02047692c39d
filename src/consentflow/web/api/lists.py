"""The cohort lists (``reports.cohorts``): a page of rows behind a dashboard number, and the
whole cohort streamed as CSV or JSON Lines.

- ``GET /api/v1/lists``: the lists there are, their filters and columns.
- ``GET /api/v1/lists/{cohort}``: one keyset page (``limit`` <= 1000) and the ``next`` cursor.
- ``GET /api/v1/lists/{cohort}/export?format=csv|jsonl``: every row, streamed from the first byte
  (the response starts before the first row is read; each partition of ``cohorts.Export``'s
  server-side cursor is read, written and handed to the server in turn, so memory stays
  flat), audited when the response
  ends however it ends (``cohort.exported``: who, cohort, filters, count, SHA-256 of the
  subjects' ids, complete or not).

Scopes: compliance and admin read and export every list; support reads the lists (people) but
may not export cohorts (403); a system token sees only its own system's purposes and
deliveries (another ``system`` is 403) and may export them. Email addresses are never included
unless the caller asks (``include=email``) and may (compliance, admin); anyone else asking is a
403. Bad filters are a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from fastapi.responses import Response, StreamingResponse

from consentflow import views
from consentflow.actors import Actor
from consentflow.models import Action, ActorType, Channel, RequestKind, State
from consentflow.reports import cohorts
from consentflow.reports.cohorts import Cohort, Filters
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.api._params import MAX_ID, SystemQuery, When, api_actor, resource_router
from consentflow.web.api._streaming import AuditedStream
from consentflow.web.auth import AuthError, ReadSession, Require
from consentflow.web.schemas import _PRINTABLE

router = resource_router(["lists"])

#: Who reads the lists: people are support's business too; a system token its own rows.
LISTS = Require(Scope.COMPLIANCE, Scope.SUPPORT, Scope.SYSTEM)
#: Who exports whole cohorts: not support.
EXPORTS = Require(Scope.COMPLIANCE, Scope.SYSTEM)
#: Who may see email addresses (when they ask).
_EMAIL_SCOPES = frozenset({Scope.ADMIN, Scope.COMPLIANCE})


def list_filters(
    purpose: Annotated[
        str | None, Query(max_length=64, pattern=_PRINTABLE, examples=["news"])
    ] = None,
    state: Annotated[State | None, Query(description="The state now")] = None,
    channel: Annotated[Channel | None, Query(description="The latest change's channel")] = None,
    locale: Annotated[str | None, Query(max_length=35, pattern=_PRINTABLE)] = None,
    version: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Notice version")] = None,
    since: When = None,
    until: When = None,
    system: SystemQuery = None,
    kind: RequestKind | None = None,
    days: Annotated[int | None, Query(ge=1, le=cohorts.MAX_DAYS)] = None,
    asked: Annotated[
        Literal["yes", "no"] | None, Query(description="not-reconfirmed: asked yet?")
    ] = None,
    status: Literal["dead", "undelivered"] | None = None,
    action: Annotated[Action | None, Query(description="changes: what the change was")] = None,
    due_since: Annotated[When, Query(description="requests: deadline at or after")] = None,
    due_until: Annotated[When, Query(description="requests: deadline before")] = None,
) -> Filters:
    """The filters of every list (each list takes some: a filter it does not take is a 422)."""
    raw: dict[str, Any] = {
        "purpose": purpose,
        "state": state,
        "channel": channel,
        "locale": locale,
        "version": version,
        "since": since,
        "until": until,
        "system": system,
        "kind": kind,
        "days": days,
        "asked": asked,
        "status": status,
        "action": action,
        "due_since": due_since,
        "due_until": due_until,
    }
    return cohorts.parse_filters(
        {k: None if v is None else str(getattr(v, "value", v)) for k, v in raw.items()}
    )


FiltersQuery = Annotated[Filters, Depends(list_filters)]
Include = Annotated[
    Literal["email"] | None,
    Query(description="email: add the subject's email address (compliance and admin only)"),
]


def restriction(caller: TokenInfo, filters: Filters) -> str | None:
    """The one system a caller may see (a system token's own), or None for any."""
    if caller.scope is not Scope.SYSTEM:
        return None
    if filters.system is not None and filters.system != caller.system:
        raise AuthError(403, f"this token speaks for system {caller.system!r} only")
    return caller.system


def wants_email(caller: TokenInfo, include: str | None) -> bool:
    """Whether to add email addresses: asked for, and allowed (403 if asked and not allowed)."""
    if include != "email":
        return False
    if caller.scope not in _EMAIL_SCOPES:
        raise AuthError(
            403, f"include=email: a {caller.scope.value} token may not see email addresses"
        )
    return True


def cohort_index() -> list[views.CohortOut]:
    return [
        views.CohortOut(
            name=d.name.value,
            title=d.title,
            description=d.description,
            filters=sorted(d.takes),
            columns=list(d.columns),
        )
        for d in cohorts.DEFINITIONS.values()
    ]


@router.get("/lists", response_model=list[views.CohortOut])
def lists_index(_: Annotated[TokenInfo, Depends(LISTS.reading)]) -> list[views.CohortOut]:
    """The lists there are: what each holds, the filters it takes and its columns."""
    return cohort_index()


@router.get("/lists/{cohort}", response_model=views.ListPageOut)
def list_page(
    cohort: Cohort,
    filters: FiltersQuery,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(LISTS.reading)],
    cursor: Annotated[str | None, Query(max_length=500, pattern=r"^[A-Za-z0-9_-]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=cohorts.MAX_LIMIT)] = cohorts.DEFAULT_LIMIT,
    include: Include = None,
) -> Response:
    """One page of the rows behind a dashboard number, in the list's keyset order; pass
    ``next`` as ``cursor`` for the following page (the same cost at any depth)."""
    email = wants_email(caller, include)
    q = cohorts.prepare(
        session, cohort, filters, restrict=restriction(caller, filters), email=email
    )
    after = cohorts.decode_cursor(cohort, cursor) if cursor else None
    page = cohorts.read_page(session, cohort, q, after, limit)
    model = cohorts.DEFINITIONS[cohort].model
    out = views.ListPageOut(
        cohort=cohort.value,
        filters=filters.given(),
        limit=limit,
        next=None if page.next_key is None else cohorts.encode_cursor(cohort, page.next_key),
        rows=[model.model_validate(r) for r in page.rows],
    )
    return Response(out.model_dump_json(exclude_unset=True), media_type="application/json")


def start_export(
    session: ReadSession,
    cohort: Cohort,
    filters: Filters,
    caller: TokenInfo,
    actor: Actor,
    fmt: str,
    include: str | None,
    filename: str | None = None,
) -> AuditedStream:
    """Check the filters (before anything is sent), then stream the export."""
    email = wants_email(caller, include)
    q = cohorts.prepare(
        session, cohort, filters, restrict=restriction(caller, filters), email=email
    )
    export = cohorts.Export(cohort=cohort, query=q, actor=actor, format=fmt)
    return AuditedStream(export, filename)


@router.get(
    "/lists/{cohort}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "Every row of the list, in its order: JSON Lines of its row model, "
            "or CSV with a header",
        }
    },
)
def export_list(
    cohort: Cohort,
    filters: FiltersQuery,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(EXPORTS.reading)],
    fmt: Annotated[Literal["jsonl", "csv"], Query(alias="format")] = "jsonl",
    include: Include = None,
) -> StreamingResponse:
    """Stream every row of the list (no paging), audited when the stream ends
    (``cohort.exported``: who, cohort, filters, count, SHA-256 of the subjects' ids)."""
    actor = Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))
    return start_export(session, cohort, filters, caller, actor, fmt, include)

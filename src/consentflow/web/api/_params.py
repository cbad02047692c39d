"""What every API router shares: path and query parameter types, the instant parser, and who the
ledger records for a change made through the API.

The parameter types carry the OpenAPI constraints (length, pattern, range), so bad input is a 422
naming the field before a route runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from consentflow import subjects
from consentflow.errors import InvalidInput
from consentflow.timeutil import parse_instant
from consentflow.tokens import TokenInfo
from consentflow.web.schemas import _PRINTABLE, ERRORS

API_PREFIX = "/api/v1"
MAX_ID = 2**31 - 1
MAX_CURSOR = 2**63 - 1

#: The identifier rule (``subjects.check_external_id``), so an id the ledger would refuse is a
#: 422 naming the parameter before a route runs, whether it is in the path or the query.
_SUBJECT: dict[str, Any] = {
    "min_length": 1,
    "max_length": subjects.MAX_EXTERNAL_ID,
    "pattern": subjects.EXTERNAL_ID_PATTERN,
    "examples": ["alice"],
}
_SYSTEM: dict[str, Any] = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", "examples": ["crm"]}
SubjectPath = Annotated[str, Path(description="The subject's external id", **_SUBJECT)]
PurposePath = Annotated[
    str,
    Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="The purpose key", examples=["news"]),
]
SystemPath = Annotated[str, Path(**_SYSTEM)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, examples=[1])]
SubjectQuery = Annotated[str, Query(**_SUBJECT)]
SubjectFilter = Annotated[str | None, Query(description="Only this subject", **_SUBJECT)]
PurposeQuery = Annotated[
    str, Query(min_length=1, max_length=64, pattern=_PRINTABLE, examples=["news"])
]
SystemQuery = Annotated[str | None, Query(**_SYSTEM)]
TextQuery64 = Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)]
TextQuery200 = Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE)]
After = Annotated[int, Query(ge=0, le=MAX_ID, description="Return items after this id")]
Limit = Annotated[int, Query(ge=1, le=1000)]
When = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z; without a zone: UTC",
        json_schema_extra={"format": "date-time"},
    ),
]


def utc(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 instant, aware UTC (``timeutil.parse_instant``); a bad or empty one is a 422.

    The API keeps its own message, which starts with the field the way the API's other 422
    answers do (``FIELD: ...``), where the CLI's reads ``bad --option ...``.
    """
    if value is None:
        return None
    try:
        parsed = parse_instant(value, field)
    except InvalidInput:
        parsed = None
    if parsed is None:
        raise InvalidInput(
            f"{field}: not an ISO 8601 instant (e.g. 2026-01-31T12:00:00Z): {value[:40]!r}"
        )
    return parsed


def api_actor(caller: TokenInfo, named: str | None = None) -> str:
    """Who the ledger records for a change made through the API: always the calling token,
    ``api:TOKEN``, after the actor the caller names (``ACTOR via api:TOKEN``) if any. The
    ``actor`` column is what the hash-chained audit entry carries, so the token is there too."""
    via = f"api:{caller.name}"
    return f"{named} via {via}" if named else via


def provenance(caller: TokenInfo) -> dict[str, Any]:
    """The evidence every change through the API carries: the token that made it."""
    return {"via_token": caller.name}


def resource_router(tags: list[str] | None = None) -> APIRouter:
    """The router of one resource: under /api/v1, with the common error answers (and its tag).

    ``web.api`` gathers their routes into one router as they are (FastAPI's ``include_router``
    would wrap each router instead of listing its routes)."""
    return APIRouter(prefix=API_PREFIX, responses=ERRORS, tags=list(tags or []))

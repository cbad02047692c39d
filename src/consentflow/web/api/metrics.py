"""``GET /metrics``: the Prometheus scrape, in the text exposition format.

At the root, not under /api/v1, because that is where Prometheus looks by default. The numbers are
read from the database on each scrape (``reports.metrics``), so any web worker gives the same
answer. It needs a bearer token like the rest of the API: a ``metrics`` token (``consentflow
token create prometheus --scope metrics``), which may read nothing else, or a ``compliance`` or
``admin`` one; a scraper's ``authorization`` setting carries it. The answer holds system names
and counts, never anything about a person. Read-only unit of work: a scrape never queues behind
a writer on SQLite.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from consentflow.reports import metrics as report
from consentflow.tokens import TokenInfo
from consentflow.web.auth import METRICS, ReadSession
from consentflow.web.schemas import ERRORS

_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The metrics in Prometheus' text exposition format",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
    }
}

#: 401 and 403 as everywhere, but without a body schema: outside /api the error handlers answer
#: a person's page, not the API's JSON.
_DENIED: dict[int | str, dict[str, Any]] = {
    code: {"description": ERRORS[code]["description"]} for code in (401, 403)
}

router = APIRouter(tags=["operations"], responses={**_TEXT, **_DENIED})


@router.get("/metrics", response_class=Response)
def metrics(session: ReadSession, _: Annotated[TokenInfo, Depends(METRICS.reading)]) -> Response:
    """Deliveries, outbox, emails, flow runs and the audit chain, for Prometheus
    (``consentflow_*`` families; see ``consentflow.reports.metrics``)."""
    return Response(report.exposition(session), media_type=CONTENT_TYPE_LATEST)

"""What downstream systems read: the access check (may this system use this subject's data for
this purpose?), the withdrawal feed, and the transfer gate (``transfers``: the batch check and the
export of everyone cleared). A system token speaks for its own system only.

The export streams from the first byte: the response starts before the first page is read, and
each page of ``transfers.Export`` is read, written and handed to the server in turn (a sync
generator the server pulls from its thread pool). Its audit entry is written when the response
ends, however it ends (``_streaming.AuditedStream``): complete, or cut short by a client that
went away (then it records the rows handed to the server before that, and ``complete: false``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from consentflow import access, feed, transfers, views
from consentflow.actors import Actor
from consentflow.errors import InvalidInput
from consentflow.models import ActorType, Channel
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.api._params import (
    MAX_CURSOR,
    PurposeQuery,
    SubjectQuery,
    SystemQuery,
    api_actor,
    resource_router,
)
from consentflow.web.api._streaming import AuditedStream
from consentflow.web.auth import CHECK, FEED, AuthError, ReadSession, Require
from consentflow.web.schemas import (
    NOT_FOUND,
    DecisionOut,
    Error,
    ExternalId,
    FeedItemOut,
    FeedOut,
    Strict,
    SystemName,
    Text,
)

router = resource_router(["access"])


def _own_system(caller: TokenInfo, system: str | None) -> str | None:
    """A system token may only speak for its own system."""
    if caller.scope is not Scope.SYSTEM:
        return system
    if system is not None and system != caller.system:
        raise AuthError(403, f"this token speaks for system {caller.system!r} only")
    return caller.system


@router.get("/check", response_model=DecisionOut, responses=NOT_FOUND)
def check(
    subject: SubjectQuery,
    purpose: PurposeQuery,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(CHECK.reading)],
    system: SystemQuery = None,
) -> DecisionOut:
    """May ``system`` use this subject's data for ``purpose``? An indexed lookup, explained:
    ``allowed``, a ``reason`` code, the validity end and the consent event relied on.

    A system token checks for its own system (``system`` may be left out).
    """
    system = _own_system(caller, system)
    return DecisionOut.model_validate(access.check(session, subject, purpose, system))


@router.get("/feed", response_model=FeedOut, responses=NOT_FOUND)
def withdrawal_feed(
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(FEED.reading)],
    system: SystemQuery = None,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> FeedOut:
    """Withdrawals (revoked, expired, invalidated) for the system's purposes after ``cursor``.

    Resume from ``next_cursor``; items mirror the webhook body. A system token reads its own feed.
    """
    name = _own_system(caller, system)
    if name is None:
        raise InvalidInput("system: required (the system whose feed to read)")
    items = feed.withdrawals_since(session, name, cursor, limit)
    return FeedOut(
        system=name,
        items=[FeedItemOut.of(i) for i in items],
        next_cursor=items[-1].cursor if items else cursor,
    )


# ---------------------------------------------------------------------------- transfer gate

#: Exports of whole cohorts: compliance, or a system token for its own system (not support).
EXPORT = Require(Scope.COMPLIANCE, Scope.SYSTEM)
GATE_CLOSED: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Error,
        "description": "The system is not registered for the purpose "
        "(system_not_authorised): nothing is released",
    }
}


class BatchCheckIn(Strict):
    purpose: Annotated[Text, Field(min_length=1, max_length=64, examples=["news"])]
    #: A system token may leave it out (its own system).
    system: SystemName | None = None
    subjects: Annotated[list[ExternalId], Field(min_length=1, max_length=transfers.MAX_BATCH)]


def _gate_actor(caller: TokenInfo) -> Actor:
    return Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))


def _gate_system(caller: TokenInfo, system: str | None) -> str:
    name = _own_system(caller, system)
    if name is None:
        raise InvalidInput("system: required (the system the data is for)")
    return name


@router.post(
    "/check/batch", response_model=views.BatchCheckOut, responses={**NOT_FOUND, **GATE_CLOSED}
)
def check_batch(
    body: BatchCheckIn,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(CHECK.reading)],
) -> Response:
    """The access check for up to 10,000 subjects at once (one purpose, one system): each
    answered in the order asked, with its reason code and the evidence relied on; audited
    (``transfer.checked``: who, purpose, system, count cleared, SHA-256 of their ids)."""
    system = _gate_system(caller, body.system)
    result = transfers.check_batch(body.purpose, system, body.subjects, _gate_actor(caller))
    # Written here, once: FastAPI would dump the model, validate it again and dump it again
    # (a third of a second for 10,000 answers).
    view = views.BatchCheckOut.model_validate(result)
    return Response(view.model_dump_json(), media_type="application/json")


@router.get(
    "/export/eligible",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "Every subject cleared, one a line: subject, event_id, "
            "purpose_version, valid_until (JSON Lines, or CSV with a header)",
        },
        **NOT_FOUND,
        **GATE_CLOSED,
    },
)
def export_eligible(
    purpose: PurposeQuery,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(EXPORT.reading)],
    system: SystemQuery = None,
    fmt: Annotated[Literal["jsonl", "csv"], Query(alias="format")] = "jsonl",
) -> StreamingResponse:
    """Stream every subject whose consent lets ``system`` use their data for ``purpose`` right
    now, with the evidence (consent event, notice version, end of validity), in subject order;
    audited when the stream ends (``transfer.exported``: who, purpose, system, count, SHA-256 of
    the ids sent, complete or not). A system token exports for its own system."""
    opened = transfers.gate(session, purpose, _gate_system(caller, system))
    return AuditedStream(transfers.Export(opened=opened, actor=_gate_actor(caller), format=fmt))

"""What downstream systems read: the access check (may this system use this subject's data for
this purpose?) and the withdrawal feed. A system token speaks for its own system only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from consentflow import access, feed
from consentflow.errors import InvalidInput
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.api._params import (
    MAX_CURSOR,
    PurposeQuery,
    SubjectQuery,
    SystemQuery,
    resource_router,
)
from consentflow.web.auth import CHECK, FEED, AuthError, ReadSession
from consentflow.web.schemas import NOT_FOUND, DecisionOut, FeedItemOut, FeedOut

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

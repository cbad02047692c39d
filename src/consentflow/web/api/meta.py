"""Liveness and the caller's identity: ``/health`` (no token) and ``/me``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from sqlalchemy import text

from consentflow.tokens import TokenInfo
from consentflow.web.api._params import resource_router
from consentflow.web.auth import ANY, ReadSession
from consentflow.web.schemas import Health, Me

router = resource_router(["meta"])


@router.get("/health", response_model=Health)
def health(session: ReadSession) -> Health:
    """Liveness and database reachability; needs no token."""
    session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok")


@router.get("/me", response_model=Me)
def me(caller: Annotated[TokenInfo, Depends(ANY.reading)]) -> Me:
    """The token's name, scope and system."""
    return Me.model_validate(caller)

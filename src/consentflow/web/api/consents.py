"""Consent changes (request, grant, refuse, revoke, renew) and the list of consent requests.

A change through the API always names the calling token (``actor`` and the event's evidence); the
rules of what may change live in ``consentflow.lifecycle``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, Depends

from consentflow import lifecycle, reports
from consentflow.errors import InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import ActorType, Channel, RequestKind, RequestStatus
from consentflow.tokens import Scope, TokenInfo
from consentflow.web.api._params import (
    After,
    Limit,
    PurposePath,
    SubjectFilter,
    SubjectPath,
    TextQuery64,
    api_actor,
    provenance,
    resource_router,
)
from consentflow.web.auth import ACT, READ, DbSession, ReadSession
from consentflow.web.schemas import (
    CONFLICT,
    NOT_FOUND,
    ChangeAction,
    ChangeIn,
    ChangeOut,
    RequestOut,
    RequestsOut,
)

router = resource_router(["consents"])


_CHANGES = {
    "request": lifecycle.request,
    "grant": lifecycle.grant,
    "refuse": lifecycle.refuse,
    "revoke": lifecycle.revoke,
    "renew": lifecycle.renew,
}


@router.post(
    "/subjects/{subject}/consents/{purpose}/{action}",
    response_model=ChangeOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def change_consent(
    subject: SubjectPath,
    purpose: PurposePath,
    action: ChangeAction,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ACT)],
    body: Annotated[ChangeIn | None, Body()] = None,
) -> ChangeOut:
    """Record a consent change: request, grant, refuse, revoke or renew.

    Every change names the calling token (see ``provenance``): in ``actor`` (``api:TOKEN``,
    or ``ACTOR via api:TOKEN`` when the body names an actor) and as ``{"via_token": TOKEN}``
    in the event's evidence. Support tokens act as an agent named after the token, through the
    support channel, and must give a ``reason``. The channels ``email_link`` and ``web`` are
    refused (422): only the signed-link and preference pages record those.
    """
    body = body or ChangeIn()
    if caller.scope is Scope.SUPPORT:
        if not body.reason:
            raise InvalidInput("reason: required when a support agent acts for a subject")
        actor = Actor(
            ActorType.AGENT,
            Channel.SUPPORT,
            name=caller.name,
            reason=body.reason,
            evidence=provenance(caller),
        )
    else:
        actor = Actor(
            ActorType(body.actor_type),
            Channel(body.channel),
            name=api_actor(caller, body.actor),
            reason=body.reason,
            evidence=provenance(caller),
        )
    return ChangeOut.of(_CHANGES[action](session, subject, purpose, actor))


@router.get("/requests", response_model=RequestsOut)
def list_requests(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
    status: RequestStatus | None = None,
    kind: RequestKind | None = None,
    purpose: TextQuery64 = None,
    subject: SubjectFilter = None,
    after: After = 0,
    limit: Limit = 100,
) -> RequestsOut:
    """Consent requests (collection and re-consent), oldest first, a page at a time."""
    rows, more = reports.requests_page(
        session,
        status=status,
        kind=kind,
        purpose=purpose,
        subject=subject,
        after=after,
        limit=limit,
    )
    items = [RequestOut.of(r, ext, key) for r, ext, key in rows]
    return RequestsOut(items=items, next=items[-1].id if more else None)

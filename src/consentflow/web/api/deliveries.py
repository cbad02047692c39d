"""Webhook deliveries (the outbox): list, health per system, one with its attempts, replay
(one delivery, or a system's dead letters), and pausing or resuming a system's endpoint (as
``consentflow system pause|resume`` and the workspace's Systems page do). The list and the
detail are the delivery engine's own queries (``delivery.ops``, the same as ``deliveries
list/show``); replays are its audited operation (``web.delivery_ops``), pause and resume
``delivery.ops.set_status`` (audited ``system.paused`` / ``system.resumed`` under the calling
token). Compliance may do all of these (issue 10: compliance replays dead letters and pauses and
resumes a system), as from the workspace."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Body, Depends, Query

from consentflow import views
from consentflow.delivery import ops
from consentflow.models import DeliveryState
from consentflow.tokens import TokenInfo
from consentflow.web import delivery_ops
from consentflow.web.api._params import (
    After,
    IdPath,
    Limit,
    SystemPath,
    SystemQuery,
    resource_router,
)
from consentflow.web.auth import COMPLIANCE, DbSession, ReadSession
from consentflow.web.schemas import (
    CONFLICT,
    NOT_FOUND,
    DeliveriesOut,
    DeliveryDetail,
    DeliveryOut,
    HealthRow,
    Reason,
    ReplayOut,
)

router = resource_router(["delivery"])


@router.get("/deliveries", response_model=DeliveriesOut, responses=NOT_FOUND)
def list_deliveries(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    system: SystemQuery = None,
    state: DeliveryState | None = None,
    after: After = 0,
    limit: Limit = 100,
) -> DeliveriesOut:
    """Webhook deliveries (the outbox), oldest first, a page at a time (``deliveries list``)."""
    found, more = ops.deliveries_page(
        session, system=system, state=state.value if state else None, after=after, limit=limit
    )
    return DeliveriesOut(
        items=[DeliveryOut.model_validate(v) for v in found],
        next=found[-1].id if more else None,
    )


@router.get("/deliveries/health", response_model=list[HealthRow])
def delivery_health(
    session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> list[HealthRow]:
    """Per downstream system with a webhook: pending withdrawals (and held), the oldest one's
    age, retrying and dead deliveries, failures over 24 hours, and the endpoint's status."""
    return [HealthRow.model_validate(h) for h in delivery_ops.health(session)]


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    responses=NOT_FOUND,
)
def get_delivery(
    delivery_id: IdPath, session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> DeliveryDetail:
    """One delivery with its payload and every attempt, in the order they were made."""
    return DeliveryDetail.model_validate(ops.detail(session, delivery_id))


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=ReplayOut,
    responses=NOT_FOUND,
)
def replay_delivery(
    delivery_id: IdPath, session: DbSession, caller: Annotated[TokenInfo, Depends(COMPLIANCE)]
) -> ReplayOut:
    """Send one delivery again (same webhook id, fresh signature), whatever its state."""
    ids = delivery_ops.replay(session, [delivery_id], actor=caller.name)
    return ReplayOut(replayed=len(ids), ids=ids)


@router.post("/systems/{name}/replay", response_model=ReplayOut, responses=NOT_FOUND)
def replay_dead(
    name: SystemPath,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> ReplayOut:
    """Send a system's dead letters again (oldest first, up to ``limit``)."""
    ids = delivery_ops.replay(
        session, delivery_ops.dead_ids(session, name, limit), actor=caller.name
    )
    return ReplayOut(replayed=len(ids), ids=ids)


@router.post(
    "/systems/{name}/{verb}",
    response_model=views.SystemStatusOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def set_system_status(
    name: SystemPath,
    verb: Literal["pause", "resume"],
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
    reason: Annotated[Reason | None, Body(embed=True)] = None,
) -> views.SystemStatusOut:
    """Pause a system's endpoint (its deliveries are held, nothing is discarded) or resume it
    (its held deliveries go out at once). 409 if it is in that state already."""
    system, pending = ops.set_status(session, name, verb, reason=reason, actor=caller.name)
    return views.SystemStatusOut(
        name=name, status=system.status, reason=system.status_reason, pending=pending
    )

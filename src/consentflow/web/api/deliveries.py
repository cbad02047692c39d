"""Webhook deliveries (the outbox): list, health per system, one with its attempts, and replay
(one delivery, or a system's dead letters). Replays are the delivery engine's audited operation
(``web.delivery_ops``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query

from consentflow import reports
from consentflow.errors import NotFound
from consentflow.models import Delivery, DeliveryState
from consentflow.tokens import TokenInfo
from consentflow.web import delivery_ops
from consentflow.web.api._params import (
    After,
    IdPath,
    Limit,
    SystemPath,
    SystemQuery,
    page,
    resource_router,
)
from consentflow.web.auth import ADMIN, COMPLIANCE, DbSession, ReadSession
from consentflow.web.schemas import (
    NOT_FOUND,
    DeliveriesOut,
    DeliveryDetail,
    HealthRow,
    ReplayOut,
)

router = resource_router(["delivery"])


def _delivery_dict(d: Delivery, system: str) -> dict[str, Any]:
    return {
        "id": d.id,
        "system": system,
        "webhook_id": d.webhook_id,
        "event_id": str(d.event_id),
        "event_type": d.event_type,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
        "last_status": d.last_status,
        "last_error": d.last_error,
    }


@router.get("/deliveries", response_model=DeliveriesOut)
def list_deliveries(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    system: SystemQuery = None,
    state: DeliveryState | None = None,
    after: After = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Webhook deliveries (the outbox), oldest first, a page at a time."""
    rows, more = reports.deliveries_page(
        session, system=system, state=state, after=after, limit=limit
    )
    return page([_delivery_dict(d, name) for d, name in rows], more)


@router.get("/deliveries/health", response_model=list[HealthRow])
def delivery_health(
    session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> list[dict[str, Any]]:
    """Per downstream system with a webhook: pending withdrawals (and held), the oldest one's
    age, retrying and dead deliveries, failures over 24 hours, and the endpoint's status."""
    return [delivery_ops.health_dict(h) for h in delivery_ops.health(session)]


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    responses=NOT_FOUND,
)
def get_delivery(
    delivery_id: IdPath, session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> dict[str, Any]:
    """One delivery with its payload and every attempt."""
    found = reports.delivery_detail(session, delivery_id)
    if found is None:
        raise NotFound(f"unknown delivery {delivery_id}")
    delivery, name, attempts = found
    return {
        **_delivery_dict(delivery, name),
        "payload": delivery.payload,
        "attempts_log": [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error_class": a.error_class,
                "response_excerpt": a.response_excerpt,
            }
            for a in attempts
        ],
    }


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=ReplayOut,
    responses=NOT_FOUND,
)
def replay_delivery(
    delivery_id: IdPath, session: DbSession, caller: Annotated[TokenInfo, Depends(ADMIN)]
) -> dict[str, Any]:
    """Send one delivery again (same webhook id, fresh signature), whatever its state."""
    ids = delivery_ops.replay(session, [delivery_id], actor=caller.name)
    return {"replayed": len(ids), "ids": ids}


@router.post("/systems/{name}/replay", response_model=ReplayOut, responses=NOT_FOUND)
def replay_dead(
    name: SystemPath,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ADMIN)],
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Send a system's dead letters again (oldest first, up to ``limit``)."""
    ids = delivery_ops.replay(
        session, delivery_ops.dead_ids(session, name, limit), actor=caller.name
    )
    return {"replayed": len(ids), "ids": ids}

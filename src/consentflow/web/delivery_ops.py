"""Delivery health and replay for the web app: the delivery engine's own operations.

The web app never reimplements what ``consentflow.delivery`` does: health is its per-endpoint
aggregate (``delivery.health.endpoint_health``) and replay is its audited ``delivery.ops.replay``
(same ``webhook-id``, fresh retry schedule). This module only adapts them to what the API and the
dashboard show, in one place.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from consentflow import datakeys
from consentflow.delivery import health as _health
from consentflow.delivery import ops as _ops
from consentflow.errors import InvalidInput, NotFound
from consentflow.models import Delivery, DeliveryState, System

Health = _health.EndpointHealth


def health(session: Session) -> list[Health]:
    """Per downstream system with a webhook: pending (and held), retrying, dead, the oldest
    undelivered withdrawal, failures over 24 hours, status and last success."""
    return _health.endpoint_health(session)


def replay(session: Session, ids: list[int], *, actor: str | None = None) -> list[int]:
    """Send these deliveries again (each audited by the delivery engine)."""
    for delivery_id in ids:
        _ops.replay(session, delivery_id, actor=actor)
    return list(ids)


def dead_ids(session: Session, system: str, limit: int) -> list[int]:
    """The oldest dead letters of one system (what a bulk replay sends again)."""
    if not 1 <= limit <= 10000:
        raise InvalidInput("limit must be between 1 and 10000")
    system_id = session.exec(select(System.id).where(System.name == system)).first()
    if system_id is None:
        raise NotFound(f"unknown system {system!r}")
    ids = session.exec(
        select(Delivery.id)
        .where(Delivery.system_id == system_id, Delivery.state == DeliveryState.DEAD.value)
        .order_by(col(Delivery.id))
        .limit(limit)
    ).all()
    found = [i for i in ids if i is not None]  # stored rows always have an id
    never = datakeys.shredded(session, found)  # an erased person's, whose key is destroyed
    return [i for i in found if i not in never]

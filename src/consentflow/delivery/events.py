"""Near-real-time propagation: a Prefect event after every commit that enqueued deliveries.

The ledger core knows nothing of Prefect. The operations that make deliveries due note it in the
session's ``info`` under ``OUTBOX_KEY`` (``ledger.note_outbox``): the write path for every new
outbox row, ``delivery.ops`` for replays, redeliveries and resumed endpoints. Nobody else emits.
``install()`` adds session listeners: once such a session has committed, one
``consentflow.consent.withdrawn`` event is emitted (one per transaction, however many rows); a
rollback clears the note and emits nothing. The deployment trigger in ``prefect.yaml`` starts the
``propagate`` deployment on that event within about a second; the frequent schedule remains the
safety net, so a lost event only delays delivery.

Events go out only when ``PREFECT_API_URL`` is set: without a server there is nobody to react,
and emitting would start a temporary Prefect server inside a one-line CLI command. The event
carries no personal data: just how many deliveries were enqueued.

Importing this module has no side effect. Each process calls ``install()`` once at start-up: the
CLI (its root callback), every flow run (``flows.common.start``: expiries and invalidations made
on a Prefect worker wake propagation too) and the web app (its start-up).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from consentflow.ledger import OUTBOX_KEY

log = logging.getLogger("consentflow.delivery")

EVENT = "consentflow.consent.withdrawn"
RESOURCE_ID = "consentflow.outbox"
_installed = False


def emit(rows: int, *, drain: bool = False) -> bool:
    """Emit the wake-up event now (if a Prefect API is configured). Never raises."""
    if not os.environ.get("PREFECT_API_URL"):
        return False
    try:
        from prefect.events import emit_event

        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": RESOURCE_ID, "prefect.resource.name": "outbox"},
            payload={"deliveries": rows},
        )
        if drain:
            from prefect.events.worker import EventsWorker

            EventsWorker.drain_all(timeout=5)
        return True
    except Exception as exc:  # the change is committed; the schedule will pick it up
        log.warning("could not emit %s: %s", EVENT, exc)
        return False


def _after_commit(session: Session) -> None:
    rows = session.info.pop(OUTBOX_KEY, 0)
    if rows:
        try:
            emit(rows)
        except Exception as exc:  # never let a notification disturb a committed change
            log.warning("could not emit %s: %s", EVENT, exc)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    session.info.pop(OUTBOX_KEY, None)


def install() -> None:
    """Start emitting after commits that enqueued deliveries (idempotent, process-wide)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_rollback)
    _installed = True

"""The WHERE clauses the dashboard counts and the cohort lists list: one definition each.

The dashboard's tables (``consents``, ``requests``) count with these, and ``cohorts`` lists the
rows with the very same ones, so "the number" and "the rows behind it" cannot disagree (a test
compares them for every cohort). Each takes the columns it reads (the ORM class's or the Core
table's ``c``; both are the same columns) and returns a SQL condition.

- ``lapsed``: a given consent whose validity has ended counts as expired (``ledger``'s
  ``effective_state``, the access check's answer) even before the sweep records it;
  ``effective_state`` and ``in_state`` are that rule as a column and as a filter.
- ``expiring``: given, validity ending in ``(now, end]``.
- ``pending``: an open consent request.
- ``stale``: given on a notice version older than its purpose's latest material one ("not yet
  re-confirmed"); ``asked``: a re-consent request is open for it or one already asked for that
  material version (the re-consent sweep's rule, ``sweeps.reconsent._unasked_stale``, which
  sits in a sibling layer and so keeps its own statement of it).
- ``withdrawal``: a consent event that is a withdrawal (the trend's "withdrawals").
- ``undelivered`` / ``dead``: a delivery not yet delivered (held ones too) / retries exhausted
  (the delivery health's ``pending`` and ``dead``).

Failure modes: none; pure expressions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, false, literal, or_, select
from sqlmodel import col

from consentflow.models import (
    Action,
    ConsentRequest,
    DeliveryState,
    RequestKind,
    RequestStatus,
    State,
)

#: The consent event action the dashboard's trend counts as a withdrawal.
WITHDRAWAL = Action.REVOKE.value


def lapsed(c: Any, now: datetime) -> Any:
    """Given, but its validity has ended (counts as expired)."""
    return and_(c.state == State.GIVEN.value, c.valid_until <= now)


def effective_state(c: Any, now: datetime) -> Any:
    """The state the access check answers: a lapsed given consent is expired."""
    return case((lapsed(c, now), literal(State.EXPIRED.value)), else_=c.state)


def in_state(c: Any, state: str, now: datetime) -> Any:
    """Consents whose effective state is ``state``."""
    if state == State.GIVEN.value:
        return and_(c.state == state, or_(c.valid_until.is_(None), c.valid_until > now))
    if state == State.EXPIRED.value:
        return or_(c.state == state, lapsed(c, now))
    return c.state == state


def expiring(c: Any, now: datetime, end: datetime) -> Any:
    """Given consents whose validity ends after ``now`` and at or before ``end``."""
    return and_(c.state == State.GIVEN.value, c.valid_until > now, c.valid_until <= end)


def pending(r: Any) -> Any:
    """An open consent request."""
    return r.status == RequestStatus.OPEN.value


def material_version(c: Any, materials: Mapping[int, int]) -> Any:
    """The latest material version of the consent's purpose (0 for a purpose not listed)."""
    if not materials:
        return literal(0)
    return case(*((c.purpose_id == pid, mv) for pid, mv in materials.items()), else_=0)


def stale(c: Any, materials: Mapping[int, int]) -> Any:
    """Given on a version older than the latest material one; ``materials``: purpose id ->
    material version, for the purposes revised materially (version > 1)."""
    if not materials:
        return false()
    return and_(
        c.state == State.GIVEN.value,
        c.purpose_id.in_(list(materials)),
        c.purpose_version < material_version(c, materials),
    )


def asked(c: Any, materials: Mapping[int, int]) -> Any:
    """A re-consent request is open for this consent, or one asked for the material version."""
    r = ConsentRequest
    return (
        select(col(r.id))
        .where(
            col(r.subject_id) == c.subject_id,
            col(r.purpose_id) == c.purpose_id,
            col(r.kind) == RequestKind.RECONSENT.value,
            or_(
                col(r.status) == RequestStatus.OPEN.value,
                col(r.purpose_version) >= material_version(c, materials),
            ),
        )
        .exists()
    )


def withdrawal(e: Any) -> Any:
    return e.action == WITHDRAWAL


def undelivered(d: Any) -> Any:
    return d.state == DeliveryState.PENDING.value


def dead(d: Any) -> Any:
    return d.state == DeliveryState.DEAD.value

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
- ``stale``, ``asked``, ``material_version``: who must re-confirm after a material revision
  (``consentflow.reconfirm``, the one rule the re-consent sweep asks by too).
- ``withdrawal``: a consent event that is a withdrawal (the trend's "withdrawals").
- ``undelivered`` / ``dead``: a delivery not yet delivered (held ones too) / retries exhausted
  (the delivery health's ``pending`` and ``dead``).

Failure modes: none; pure expressions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, literal, or_

from consentflow.models import Action, DeliveryState, RequestStatus, State
from consentflow.reconfirm import asked, material_version, stale

__all__ = ["asked", "material_version", "stale"]  # with the rules defined here

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


def withdrawal(e: Any) -> Any:
    return e.action == WITHDRAWAL


def undelivered(d: Any) -> Any:
    return d.state == DeliveryState.PENDING.value


def dead(d: Any) -> Any:
    return d.state == DeliveryState.DEAD.value

"""The SQL of each cohort list (``reports.cohorts``): one builder per cohort, each a SELECT of
the row model's columns in order (``email`` last, only when asked) and its keyset order key.

Invariants: the WHERE clauses that a dashboard number shares are ``reports._where``'s; the
filters a builder reads are those its ``Definition`` takes (``cohorts.prepare`` checked them);
``Query`` holds what the filters name already resolved to ids. Pure statement building: no
database access, no failure modes of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select, true

from consentflow.models import metadata
from consentflow.reports import _where
from consentflow.reports._filters import Filters

#: ``expiring`` without ``days``: the dashboard's 30-day window.
DEFAULT_DAYS = 30

_C = metadata.tables["consent"].alias("c")
_S = metadata.tables["subject"].alias("s")
_P = metadata.tables["purpose"].alias("p")
_E = metadata.tables["consent_event"].alias("e")
_R = metadata.tables["consent_request"].alias("r")
_D = metadata.tables["delivery"].alias("d")
_SYS = metadata.tables["system"].alias("sys")
_SP = metadata.tables["system_purpose"]


@dataclass(frozen=True)
class Query:
    """The state one page is read with: resolved ids, the instant, the restriction."""

    filters: Filters
    now: datetime
    email: bool
    purpose_id: int | None
    system_id: int | None
    #: Purpose id -> latest material version, for the revised purposes.
    materials: Mapping[int, int]


def _system_purposes(q: Query, purpose_col: Any) -> ColumnElement[bool]:
    if q.system_id is None:
        return true()
    return purpose_col.in_(select(_SP.c.purpose_id).where(_SP.c.system_id == q.system_id))


def _common(q: Query, purpose_col: Any, version_col: Any) -> list[Any]:
    f = q.filters
    where: list[Any] = [_system_purposes(q, purpose_col)]
    if q.purpose_id is not None:
        where.append(purpose_col == q.purpose_id)
    if f.locale is not None:
        where.append(_S.c.locale == f.locale)
    if f.version is not None:
        where.append(version_col == f.version)
    return where


def _range(column: Any, start: datetime | None, end: datetime | None) -> list[Any]:
    """``column`` in ``[start, end)`` (an unset bound: no bound)."""
    out: list[Any] = []
    if start is not None:
        out.append(column >= start)
    if end is not None:
        out.append(column < end)
    return out


def _email(q: Query) -> list[Any]:
    return [_S.c.email.label("email")] if q.email else []


def _consent_select(q: Query, *where: Any) -> Select[Any]:
    c = _C.c
    f = q.filters
    conditions = [*where, *_common(q, c.purpose_id, c.purpose_version)]
    if f.channel is not None:
        conditions.append(_E.c.channel == f.channel)
    return (
        select(
            _S.c.external_id.label("subject"),
            _P.c.key.label("purpose"),
            _where.effective_state(c, q.now).label("state"),
            c.purpose_version,
            _E.c.channel,
            _S.c.locale,
            c.given_at,
            c.valid_until,
            c.updated_at,
            c.last_event_id.label("event_id"),
            *_email(q),
        )
        .select_from(
            _C.join(_S, _S.c.id == c.subject_id)
            .join(_P, _P.c.id == c.purpose_id)
            .join(_E, _E.c.id == c.last_event_id)
        )
        .where(and_(*conditions))
    )


def consents(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    f = q.filters
    where = [] if f.state is None else [_where.in_state(_C.c, f.state, q.now)]
    return _consent_select(q, *where, *_range(_C.c.updated_at, f.since, f.until)), (_C.c.id,)


def not_reconfirmed(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    f = q.filters
    where = [_where.stale(_C.c, q.materials), *_range(_C.c.updated_at, f.since, f.until)]
    if f.asked is not None:
        asked = _where.asked(_C.c, q.materials)
        where.append(asked if f.asked == "yes" else ~asked)
    return _consent_select(q, *where), (_C.c.id,)


def expiring(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    end = q.now + timedelta(days=q.filters.days or DEFAULT_DAYS)
    return _consent_select(q, _where.expiring(_C.c, q.now, end)), (_C.c.valid_until, _C.c.id)


def requests(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    r, f = _R.c, q.filters
    where = [_where.pending(r), *_common(q, r.purpose_id, r.purpose_version)]
    where += _range(r.requested_at, f.since, f.until)  # asked
    where += _range(r.deadline, f.due_since, f.due_until)
    if f.kind is not None:
        where.append(r.kind == f.kind)
    stmt = (
        select(
            r.id.label("request_id"),
            _S.c.external_id.label("subject"),
            _P.c.key.label("purpose"),
            r.kind,
            r.status,
            r.purpose_version,
            _S.c.locale,
            r.requested_at,
            r.deadline,
            r.followups_sent,
            *_email(q),
        )
        .select_from(_R.join(_S, _S.c.id == r.subject_id).join(_P, _P.c.id == r.purpose_id))
        .where(and_(*where))
    )
    return stmt, (r.id,)


def _events(q: Query, *where: Any, action: bool = False) -> tuple[Select[Any], tuple[Any, ...]]:
    """Consent events recorded in ``[since, until)`` (``action``: the row has its action and
    the state it led to, as ``ChangeRowOut``; else ``WithdrawalRowOut``)."""
    e, f = _E.c, q.filters
    where = (*where, *_common(q, e.purpose_id, e.purpose_version))
    where += (*_range(e.recorded_at, f.since, f.until),)
    if f.channel is not None:
        where += (e.channel == f.channel,)
    stmt = (
        select(
            e.id.label("event_id"),
            _S.c.external_id.label("subject"),
            _P.c.key.label("purpose"),
            *((e.action,) if action else ()),
            e.recorded_at,
            e.occurred_at,
            e.previous_state,
            *((e.state,) if action else ()),
            e.purpose_version,
            e.channel,
            e.actor_type,
            _S.c.locale,
            *_email(q),
        )
        .select_from(_E.join(_S, _S.c.id == e.subject_id).join(_P, _P.c.id == e.purpose_id))
        .where(and_(*where))
    )
    return stmt, (e.recorded_at, e.id)


def withdrawals(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    return _events(q, _where.withdrawal(_E.c))


def changes(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    action = q.filters.action
    return _events(q, *([] if action is None else [_E.c.action == action]), action=True)


def deliveries(q: Query) -> tuple[Select[Any], tuple[Any, ...]]:
    d, f = _D.c, q.filters
    if f.status == "dead":
        where = [_where.dead(d)]
    elif f.status == "undelivered":
        where = [_where.undelivered(d)]
    else:
        where = [_where.dead(d) | _where.undelivered(d)]
    where += _range(d.created_at, f.since, f.until)
    if q.system_id is not None:
        where.append(d.system_id == q.system_id)
    if q.purpose_id is not None:
        where.append(_E.c.purpose_id == q.purpose_id)
    if f.locale is not None:
        where.append(_S.c.locale == f.locale)
    subject_id = func.coalesce(_E.c.subject_id, d.erasure_subject_id)
    stmt = (
        select(
            d.id.label("delivery_id"),
            _SYS.c.name.label("system"),
            _S.c.external_id.label("subject"),
            _P.c.key.label("purpose"),
            d.event_type,
            d.state,
            d.attempts,
            d.created_at,
            d.next_attempt_at,
            d.last_status,
            d.last_error,
            *_email(q),
        )
        .select_from(
            _D.join(_SYS, _SYS.c.id == d.system_id)
            .outerjoin(_E, _E.c.id == d.event_id)
            .join(_S, _S.c.id == subject_id)
            .outerjoin(_P, _P.c.id == _E.c.purpose_id)
        )
        .where(and_(*where))
    )
    return stmt, (d.id,)

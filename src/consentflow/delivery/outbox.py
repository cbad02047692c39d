"""The outbox table as the delivery engine works it: what is due, leases, and results.

A claim is one short transaction: select due rows (pending, ``next_attempt_at`` reached, no live
lease, system active) ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has a single writer), set
``leased_until`` and commit; the system's secrets are decrypted once per claim (``secretbox``),
and a body about an erased subject, kept sealed under their data key, is opened for sending
(``datakeys``; a body whose key was destroyed is never sent: its attempt fails as misconfigured).
``record`` writes one ``delivery_attempt`` row per attempt and moves each delivery on, only while
this worker still holds the row's lease (the lease timestamp is the fencing token): 2xx
delivered, 410 disables the system, anything else retried on the persisted schedule or
dead-lettered (audited). The engine calls it as attempts complete, for the results that
completed while its previous record transaction ran (``recording``: group commit); if that
fails, it records each alone, and ``Result.unrecordable`` (the status and times, nothing the
receiver wrote) for one that fails again. ``release`` gives back the leases of claimed rows that
were not sent. ``engine`` runs the lanes and re-exports these names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, update
from sqlmodel import Session, col, select

from consentflow import audit, datakeys, secretbox
from consentflow.delivery import runlog
from consentflow.delivery.schedule import SLOW_DOWN_STATUSES, next_delay
from consentflow.models import (
    ActorType,
    Channel,
    Delivery,
    DeliveryState,
    System,
    SystemStatus,
    UTCDateTime,
    metadata,
)
from consentflow.timeutil import iso_seconds

#: Outcomes counted per system in a run's report.
DELIVERED, RETRIED, DEAD, DISABLED, HELD, SUPERSEDED, DUE = (
    "delivered",
    "retried",
    "dead_lettered",
    "disabled_410",
    "held",
    "lease_lost",
    "due",
)


@dataclass
class Claimed:
    """A delivery this worker holds a lease on, with what is needed to send it."""

    id: int
    system_id: int
    system: str
    url: str
    webhook_id: str
    payload: str
    attempts: int
    lease_token: datetime
    #: Plain secrets to sign with, new first (decrypted from ``System``; see ``secretbox``).
    secrets: tuple[str, ...] = field(repr=False)
    #: Why it cannot be sent (its secret is unreadable, or its body was shredded with an erased
    #: subject's data key): the attempt fails as misconfigured.
    secret_error: str | None = None


@dataclass
class Result:
    """What one HTTP attempt gave."""

    claimed: Claimed
    started_at: datetime
    finished_at: datetime
    latency_ms: int
    status: int | None = None
    error_class: str | None = None
    error: str | None = None
    excerpt: str | None = None
    retry_after: timedelta | None = None
    #: The run was cancelled after the answer's status arrived (record it, then stop).
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def slow_down(self) -> bool:
        return self.status in SLOW_DOWN_STATUSES or self.error_class in _TIMEOUT_CLASSES

    def unrecordable(self, exc: BaseException) -> Result:
        """This attempt as it can still be recorded after recording it failed with ``exc``:
        the status (a 2xx is still an acknowledgement) and times, nothing the receiver wrote."""
        return replace(
            self,
            error_class="Unrecordable",
            error=f"the answer could not be recorded in full ({type(exc).__name__})",
            excerpt=None,
            retry_after=None,
        )

    def describe(self) -> str:
        if self.error_class:
            return f"{self.error_class}: {self.error}" if self.error else self.error_class
        if self.status is not None and 300 <= self.status < 400:
            return f"HTTP {self.status} (redirects are not followed)"
        return f"HTTP {self.status}"


_TIMEOUT_CLASSES = frozenset(
    {"Timeout", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout"}
)


# ----------------------------------------------------------------------------------- database


def _system_filter(stmt: Any, names: Sequence[str] | None) -> Any:
    return stmt.where(col(System.name).in_(list(names))) if names is not None else stmt


def _due(now: datetime) -> Any:
    return and_(
        col(Delivery.state) == DeliveryState.PENDING.value,
        col(Delivery.next_attempt_at) <= now,
        or_(col(Delivery.leased_until).is_(None), col(Delivery.leased_until) <= now),
        col(System.status) == SystemStatus.ACTIVE.value,
        col(System.webhook_url).is_not(None),
        col(System.webhook_secret).is_not(None),
    )


def due_systems(
    session: Session, now: datetime, names: Sequence[str] | None = None
) -> dict[int, int]:
    """Active systems with deliveries due at ``now``: system id -> number due."""
    stmt = (
        select(Delivery.system_id, func.count())
        .join(System, col(System.id) == Delivery.system_id)
        .where(_due(now))
        .group_by(col(Delivery.system_id))
    )
    return {sid: n for sid, n in session.exec(_system_filter(stmt, names)).all()}


def held_counts(session: Session, names: Sequence[str] | None = None) -> dict[str, int]:
    """Pending deliveries that no worker may send: their system is paused, disabled or has no
    webhook configured. Held, never discarded."""
    stmt = (
        select(System.name, func.count())
        .join(Delivery, col(Delivery.system_id) == System.id)
        .where(
            col(Delivery.state) == DeliveryState.PENDING.value,
            or_(
                col(System.status) != SystemStatus.ACTIVE.value,
                col(System.webhook_url).is_(None),
                col(System.webhook_secret).is_(None),
            ),
        )
        .group_by(col(System.name))
    )
    return {name: n for name, n in session.exec(_system_filter(stmt, names)).all()}


_CLAIM_FIELDS: list[Any] = [
    Delivery.id,
    Delivery.webhook_id,
    Delivery.payload,
    Delivery.attempts,
    System.name,
    System.webhook_url,
    System.webhook_secret,
    System.previous_secret,
    System.previous_secret_until,
]


def claim(
    session: Session, system_id: int, *, now: datetime, limit: int, lease: timedelta
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries of one system (commit the session right after)."""
    stmt = (
        select(*_CLAIM_FIELDS)
        .join(System, col(System.id) == Delivery.system_id)
        .where(col(Delivery.system_id) == system_id, _due(now))
        .order_by(col(Delivery.next_attempt_at), col(Delivery.id))
        .limit(limit)
        .with_for_update(skip_locked=True, of=Delivery)
    )
    rows = session.exec(stmt).all()
    if not rows:
        return []
    token = now + lease
    session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_([r.id for r in rows]))
        .values(leased_until=token)
    )
    first = rows[0]  # every row is of the one system: decrypt its secrets once
    box = secretbox.Box.of(session)
    secrets: list[str] = []
    problem = None
    try:
        secrets.append(box.open(first.webhook_secret))
    except secretbox.SecretUnreadable as exc:
        problem = str(exc)
    if first.previous_secret and first.previous_secret_until and first.previous_secret_until > now:
        try:
            secrets.append(box.open(first.previous_secret))
        except secretbox.SecretUnreadable:  # the new secret still signs; the old one cannot
            runlog.logger().warning(
                "the previous webhook secret of %s is unreadable: signing with the new one only",
                first.name,
            )
    opener = datakeys.Opener(session)
    out = []
    for r in rows:
        payload, unsendable = r.payload, problem
        if datakeys.is_sealed(payload):
            try:
                payload = opener.open(payload)
            except (datakeys.Shredded, secretbox.SecretUnreadable) as exc:
                payload, unsendable = "", str(exc)
        out.append(
            Claimed(
                id=r.id,
                system_id=system_id,
                system=r.name,
                url=r.webhook_url,
                webhook_id=r.webhook_id,
                payload=payload,
                attempts=r.attempts,
                lease_token=token,
                secrets=tuple(secrets) if unsendable is None else (),
                secret_error=unsendable,
            )
        )
    return out


def release(session: Session, claims: Sequence[Claimed]) -> int:
    """Give back leases on claimed deliveries that were not sent (only leases still held)."""
    released = 0
    for c in claims:
        released += _rowcount(
            session.execute(
                update(Delivery)
                .where(col(Delivery.id) == c.id, col(Delivery.leased_until) == c.lease_token)
                .values(leased_until=None)
            )
        )
    return released


def record(session: Session, results: Sequence[Result], *, run_id: str | None = None) -> list[str]:
    """Write the attempts and move each delivery on; returns each result's outcome.

    The rows this worker still holds (pending, and leased with this result's lease token) are
    locked first; a result whose row is not among them is ``superseded`` (its lease ran out and
    another worker took the row over) and moves nothing. Per result: its attempt row, then the
    delivery's new state, one statement per kind of outcome over the whole group. Then, per
    system: the latest success, and a 410 Gone disables the endpoint. Dead letters and
    disablings are audited.
    """
    outcomes: list[str] = []
    entries: list[audit.Entry] = []
    last_success: dict[int, datetime] = {}
    gone: dict[int, Result] = {}
    held = _held(session, results)
    moves: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        outcome, params = _settle(r) if r.claimed.id in held else (SUPERSEDED, None)
        if params is not None:
            moves.setdefault(outcome, []).append(params)
        if outcome == DELIVERED:
            prev = last_success.get(r.claimed.system_id)
            at = r.finished_at
            last_success[r.claimed.system_id] = max(prev, at) if prev else at
        elif outcome == DISABLED:
            gone[r.claimed.system_id] = r
        elif outcome == DEAD:
            entries.append(_dead_letter_entry(r, run_id))
        outcomes.append(outcome)
    if results:
        session.execute(insert(_ATTEMPTS), [_attempt_row(r) for r in results])
    for outcome, rows in moves.items():
        session.execute(_MOVES[outcome], rows)
    _note_successes(session, last_success)
    entries += _disable_gone(session, gone, run_id)
    audit.append(session, entries)
    return outcomes


_ATTEMPTS = metadata.tables["delivery_attempt"]
_DELIVERY = metadata.tables["delivery"]


def _held(session: Session, results: Sequence[Result]) -> set[int]:
    """The deliveries among ``results`` this worker still holds, locked until commit: pending,
    and leased with the token of its claim (the fencing token)."""
    token = {r.claimed.id: r.claimed.lease_token for r in results}
    if not token:
        return set()
    rows = session.execute(_LEASES, {"b_ids": sorted(token)}).all()
    return {i for i, leased_until in rows if leased_until == token[i]}


#: The pending rows among some ids, locked, with their lease (built once: see ``_held``).
_LEASES = (
    select(_DELIVERY.c.id, _DELIVERY.c.leased_until)
    .where(
        _DELIVERY.c.id.in_(bindparam("b_ids", expanding=True)),
        _DELIVERY.c.state == DeliveryState.PENDING.value,
    )
    .order_by(_DELIVERY.c.id)
    .with_for_update()
)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a ``CursorResult``; ``Session.execute`` is typed more loosely)."""
    count: int = result.rowcount
    return count


def _attempt_row(r: Result) -> dict[str, Any]:
    return {
        "delivery_id": r.claimed.id,
        "attempt": r.claimed.attempts + 1,
        "started_at": r.started_at,
        "status_code": r.status,
        "latency_ms": r.latency_ms,
        "error_class": r.error_class,
        "response_excerpt": r.excerpt,
    }


def _move(**values: Any) -> Any:
    """The UPDATE that moves one held delivery on, for executemany (``b_*`` parameters)."""
    d = _DELIVERY.c
    return (
        update(_DELIVERY)
        .where(d.id == bindparam("b_id"))
        .values(
            attempts=bindparam("b_attempts"),
            last_status=bindparam("b_status"),
            leased_until=None,
            **values,
        )
    )


_MOVES = {
    DELIVERED: _move(
        state=DeliveryState.DELIVERED.value,
        delivered_at=func.coalesce(_DELIVERY.c.delivered_at, bindparam("b_at", type_=UTCDateTime)),
        last_error=None,
    ),
    DISABLED: _move(last_error=bindparam("b_error"), next_attempt_at=bindparam("b_at")),
    RETRIED: _move(last_error=bindparam("b_error"), next_attempt_at=bindparam("b_at")),
    DEAD: _move(last_error=bindparam("b_error"), state=DeliveryState.DEAD.value),
}


def _settle(r: Result) -> tuple[str, dict[str, Any]]:
    """How one held delivery moves on after an attempt: its outcome and ``_MOVES`` parameters."""
    attempt = r.claimed.attempts + 1
    params: dict[str, Any] = {"b_id": r.claimed.id, "b_attempts": attempt, "b_status": r.status}
    if r.ok:
        return DELIVERED, {**params, "b_at": r.finished_at}
    params["b_error"] = r.describe()[:500]
    if r.gone:
        return DISABLED, {**params, "b_at": r.finished_at}
    delay = next_delay(attempt, slow_down=r.slow_down, retry_after=r.retry_after)
    if delay is None:
        return DEAD, params
    return RETRIED, {**params, "b_at": r.finished_at + delay}


def _dead_letter_entry(r: Result, run_id: str | None) -> audit.Entry:
    c = r.claimed
    return audit.Entry(
        action="delivery.dead_lettered",
        actor_type=ActorType.SYSTEM.value,
        actor=c.system,
        channel=Channel.SYSTEM.value,
        run_id=run_id,
        detail={
            "delivery_id": c.id,
            "webhook_id": c.webhook_id,
            "system": c.system,
            "attempts": c.attempts + 1,
            "last_status": r.status,
            "last_error": r.describe()[:500],
        },
    )


def _note_successes(session: Session, last_success: dict[int, datetime]) -> None:
    if last_success:
        session.execute(
            _NOTE_SUCCESS, [{"b_id": sid, "b_at": at} for sid, at in last_success.items()]
        )


_SYSTEM = metadata.tables["system"]
#: A system's latest success moves forward only (results of a group commit in any order).
_NOTE_SUCCESS = (
    update(_SYSTEM)
    .where(
        _SYSTEM.c.id == bindparam("b_id"),
        or_(_SYSTEM.c.last_success_at.is_(None), _SYSTEM.c.last_success_at < bindparam("b_at")),
    )
    .values(last_success_at=bindparam("b_at"))
)


def _disable_gone(
    session: Session, gone: dict[int, Result], run_id: str | None
) -> list[audit.Entry]:
    """Disable the endpoints that answered 410 Gone (once: audited when it changes)."""
    entries = []
    for system_id, r in gone.items():
        reason = f"410 Gone at {iso_seconds(r.finished_at)}: endpoint retired"
        changed = session.execute(
            update(System)
            .where(col(System.id) == system_id, col(System.status) != SystemStatus.DISABLED.value)
            .values(status=SystemStatus.DISABLED.value, status_reason=reason)
        )
        if _rowcount(changed):
            entries.append(
                audit.Entry(
                    action="system.disabled",
                    actor_type=ActorType.SYSTEM.value,
                    actor=r.claimed.system,
                    channel=Channel.SYSTEM.value,
                    run_id=run_id,
                    detail={"system": r.claimed.system, "reason": reason},
                )
            )
    return entries

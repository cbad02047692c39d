"""Waking the delivery loop when the outbox may have new due work, and the loop's slots.

The ``propagate`` flow is a loop: deliver what is due, then ``wait`` here until something may be
due again (or a timeout, which the loop sets to when the next scheduled retry or expired lease
comes due, so retries are never late by more than the loop's safety interval).

- **PostgreSQL** (``Listener``): a dedicated psycopg autocommit connection runs
  ``LISTEN consentflow_outbox``. ``ledger.note_outbox`` issues ``pg_notify`` in the same
  transaction that writes or re-queues outbox rows, so PostgreSQL delivers the notification
  exactly when that transaction commits and never when it rolls back; the listener wakes within
  milliseconds. A notification that arrives while the loop is delivering is queued on the
  connection and wakes the next ``wait`` at once, so nothing committed between two waits is
  missed, provided the listener was opened before the first delivery pass. If the connection
  fails, the listener reconnects (at most once per ``retry_seconds``) and reports a wake-up,
  because notifications sent while it was away are lost: the caller then looks for due work.
- **SQLite** (``Poller``): no notifications exist, so ``wait`` runs a cheap indexed query
  (``due_now``: is any delivery due for an active system?) every ``interval`` (0.2 s).

Either way a wake-up only means "look": claims (``outbox.claim``) decide who delivers what, so a
spurious wake-up costs one empty pass and a missed one costs at most the timeout.

**Slots** (``acquire_slot``) cap how many loops run at once: slot ``i`` of ``loops`` is a
PostgreSQL session advisory lock held on a connection of its own, or on SQLite an exclusive
``flock`` on a file beside the database (``<db>.propagate-<i>.lock``). Both are released by the
operating system or the server when the process dies, so a killed worker frees its slot at once
(a vanished host: when the server's TCP keep-alive gives up). ``None``: every slot is taken.

Failure modes: ``Listener`` raises ``psycopg.OperationalError`` only when it cannot connect at
all at start; later connection errors are logged (no personal data: the channel and the error
class) and retried. ``Poller`` lets database errors from its query propagate to the loop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

import psycopg
from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import db
from consentflow.models import Delivery, DeliveryState, System, SystemStatus, utcnow
from consentflow.timeutil import as_utc

log = logging.getLogger("consentflow.delivery")

#: The notification channel; ``ledger.note_outbox`` notifies it (same name, spelled there too).
CHANNEL = "consentflow_outbox"
#: How often the SQLite poller looks for due work, seconds.
POLL_INTERVAL = 0.2
#: The first key of the loop slots' advisory locks ("cfpr"); the second is the slot number.
SLOT_LOCK_KEY = 0x63667072


class Waiter(Protocol):
    """Blocks until the outbox may have new due work (True) or ``timeout`` seconds pass."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


def libpq_url(engine: Engine) -> str:
    """The engine's URL as psycopg's ``connect`` takes it (no SQLAlchemy driver suffix)."""
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Listener:
    """PostgreSQL: ``LISTEN consentflow_outbox`` on a dedicated autocommit connection."""

    def __init__(self, conninfo: str, *, retry_seconds: float = 1.0) -> None:
        self._conninfo = conninfo
        self._retry = retry_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._last_attempt = 0.0
        #: How many times the connection was re-established (for the run's logs and tests).
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self._last_attempt = time.monotonic()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _drop(self, exc: BaseException) -> None:
        log.warning("LISTEN %s connection lost (%s): reconnecting", CHANNEL, type(exc).__name__)
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _reconnect(self, deadline: float) -> bool:
        """Try to connect again, no more often than ``retry_seconds``; True once connected."""
        pause = self._last_attempt + self._retry - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # a back-off, not a sync
            if time.monotonic() < self._last_attempt + self._retry:
                return False
        try:
            self._connect()
        except psycopg.Error as exc:
            log.warning("LISTEN %s: cannot reconnect (%s)", CHANNEL, type(exc).__name__)
            return False
        self.reconnects += 1
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        if self._conn is None:
            # notifications sent while disconnected are lost: report a wake-up to look anyway
            return self._reconnect(deadline)
        try:
            for _ in self._conn.notifies(timeout=max(0.0, timeout), stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            self._drop(exc)
            return self._reconnect(deadline)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Poller:
    """SQLite: look for due work every ``interval`` seconds (``due_now``)."""

    def __init__(
        self,
        engine: Engine,
        names: Sequence[str] | None = None,
        *,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._engine = engine
        self._names = names
        self._interval = interval
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed.is_set():
            with db.session_scope(self._engine, readonly=True) as session:
                if due_now(session, utcnow(), self._names):
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._closed.wait(min(self._interval, left))  # the poll interval
        return False

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def waiter(engine: Engine, names: Sequence[str] | None = None) -> Listener | Poller:
    """The waiter for ``engine``'s database: a ``Listener`` on PostgreSQL, else a ``Poller``."""
    if engine.dialect.name == "postgresql":
        return Listener(libpq_url(engine))
    return Poller(engine, names)


# ------------------------------------------------------------------------------- due work


def _active(names: Sequence[str] | None) -> list[Any]:
    where = [
        col(Delivery.state) == DeliveryState.PENDING.value,
        col(System.status) == SystemStatus.ACTIVE.value,
        col(System.webhook_url).is_not(None),
        col(System.webhook_secret).is_not(None),
    ]
    if names is not None:
        where.append(col(System.name).in_(list(names)))
    return where


def due_now(session: Session, now: datetime, names: Sequence[str] | None = None) -> bool:
    """Is any delivery claimable at ``now`` (the claim's own rule: pending, due, no live lease,
    system active with a webhook)?"""
    stmt = (
        select(col(Delivery.id))
        .join(System, col(System.id) == Delivery.system_id)
        .where(*_active(names), col(Delivery.next_attempt_at) <= now)
        .where(or_(col(Delivery.leased_until).is_(None), col(Delivery.leased_until) <= now))
        .limit(1)
    )
    return session.exec(stmt).first() is not None


def next_due(
    session: Session, now: datetime, names: Sequence[str] | None = None
) -> datetime | None:
    """When the next delivery may become claimable without a new commit: the earliest scheduled
    attempt among unleased rows, or the earliest live lease to expire (a crashed worker's)."""
    base = select(func.min(col(Delivery.next_attempt_at))).join(
        System, col(System.id) == Delivery.system_id
    )
    free = base.where(*_active(names)).where(
        or_(col(Delivery.leased_until).is_(None), col(Delivery.leased_until) <= now)
    )
    leased = (
        select(func.min(col(Delivery.leased_until)))
        .join(System, col(System.id) == Delivery.system_id)
        .where(*_active(names), col(Delivery.leased_until) > now)
    )
    times = [as_utc(session.exec(q).one()) for q in (free, leased)]
    found = [t for t in times if t is not None]
    return min(found) if found else None


# ---------------------------------------------------------------------------------- slots


class Slot:
    """One of the ``loops`` slots, held until ``release`` (or the process's end)."""

    def __init__(self, index: int, handle: psycopg.Connection[Any] | IO[str] | None) -> None:
        self.index = index
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the connection or the file drops the lock
            self._handle = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _pg_slot(engine: Engine, loops: int) -> Slot | None:
    for index in range(loops):
        conn = psycopg.connect(libpq_url(engine), autocommit=True)
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (SLOT_LOCK_KEY, index)).fetchone()
        if row and row[0]:
            return Slot(index, conn)
        conn.close()
    return None


def _sqlite_slot(engine: Engine, loops: int) -> Slot | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return Slot(0, None)  # no file to lock beside: one process owns an in-memory database
    for index in range(loops):
        path = Path(f"{database}.propagate-{index}.lock")
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return Slot(index, handle)
    return None


def acquire_slot(engine: Engine, loops: int) -> Slot | None:
    """The first free slot of ``loops``, or None when ``loops`` loops hold them all."""
    if engine.dialect.name == "postgresql":
        return _pg_slot(engine, loops)
    return _sqlite_slot(engine, loops)

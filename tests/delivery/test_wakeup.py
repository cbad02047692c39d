"""Waking the delivery loop (``delivery.wakeup``) and the ``pg_notify`` that ``note_outbox`` issues.

Real databases throughout: a committed withdrawal wakes a waiting ``Listener`` (PostgreSQL) or
``Poller`` (both backends), a rolled-back one notifies nobody, a listener whose connection is
killed reconnects and keeps waking, and the loop slots are exclusive until released. Nothing
waits on a clock to synchronise: a waiter's ``wait`` returns when woken, with a generous timeout
that only bounds a failing test.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import update
from sqlmodel import select

from consentflow import db
from consentflow.delivery import engine as eng
from consentflow.delivery import ops, wakeup
from consentflow.models import Delivery, utcnow
from tests.support.webhooks import ledger, revoke

pytestmark = pytest.mark.usefixtures("allow_loopback")

#: Bounds a failing test only: a woken waiter returns in milliseconds.
LONG = 30.0


def _due(engine) -> bool:
    with db.session_scope(engine, readonly=True) as s:
        return wakeup.due_now(s, utcnow())


def test_a_committed_withdrawal_wakes_the_waiter(engine, receiver):
    """PostgreSQL: LISTEN/NOTIFY; SQLite: the poll. Either way the wait ends with due work."""
    ledger(engine, receiver, {"crm": "/crm"})
    with wakeup.waiter(engine) as waiter, ThreadPoolExecutor(1) as pool:
        assert waiter.wait(0) is False  # nothing due, nothing noted
        woken = pool.submit(waiter.wait, LONG)
        revoke(engine)
        assert woken.result(timeout=LONG + 5) is True
    assert _due(engine)


def test_the_poller_wakes_on_due_work_on_either_database(engine, receiver):
    ledger(engine, receiver, {"crm": "/crm"})
    with wakeup.Poller(engine) as poller, ThreadPoolExecutor(1) as pool:
        woken = pool.submit(poller.wait, LONG)
        revoke(engine)
        assert woken.result(timeout=LONG + 5) is True
        # only the named systems count
        assert wakeup.Poller(engine, ["other"]).wait(0) is False


def test_next_due_is_the_scheduled_retry_or_the_lease_expiry(engine, receiver):
    ledger(engine, receiver, {"crm": "/crm"})
    receiver.set("/crm", status=500)
    revoke(engine)
    now = utcnow()
    with db.session_scope(engine, readonly=True) as s:
        assert wakeup.next_due(s, now) is not None and wakeup.due_now(s, now)
    eng.deliver_due(engine, options=eng.Options(timeout=5))
    with db.session_scope(engine) as s:
        [row] = s.exec(select(Delivery)).all()
        assert row.attempts == 1 and row.state == "pending"
        assert wakeup.next_due(s, utcnow()) == row.next_attempt_at  # the retry, 5 s +/- 20 %
        assert not wakeup.due_now(s, utcnow())
        # a live lease (a worker holds it, or died holding it): due again when it expires
        lease = utcnow() + timedelta(minutes=3)
        s.execute(update(Delivery).values(next_attempt_at=utcnow(), leased_until=lease))
    with db.session_scope(engine, readonly=True) as s:
        assert wakeup.next_due(s, utcnow()) == lease
        assert not wakeup.due_now(s, utcnow())


def test_slots_are_exclusive_until_released(engine):
    first = wakeup.acquire_slot(engine, 2)
    second = wakeup.acquire_slot(engine, 2)
    assert first is not None and second is not None
    assert {first.index, second.index} == {0, 1}
    assert wakeup.acquire_slot(engine, 2) is None  # both held: a run does one pass instead
    first.release()
    again = wakeup.acquire_slot(engine, 2)
    assert again is not None and again.index == first.index
    again.release()
    second.release()
    with wakeup.acquire_slot(engine, 1) as only:  # type: ignore[union-attr]
        assert only.index == 0


# ------------------------------------------------------------------------ PostgreSQL only


def _listen(pg_engine) -> psycopg.Connection:
    conn = psycopg.connect(wakeup.libpq_url(pg_engine), autocommit=True)
    conn.execute(f"LISTEN {wakeup.CHANNEL}")
    return conn


def _payloads_until_marker(conn: psycopg.Connection) -> list[str]:
    """Every notification on the channel up to (not including) the test's marker."""
    seen = []
    for note in conn.notifies(timeout=LONG):
        if note.payload == "marker":
            return seen
        seen.append(note.payload)
    raise AssertionError("the marker notification never arrived")


def test_notify_fires_at_commit_once_per_transaction_and_never_on_rollback(pg_engine, receiver):
    from consentflow import ledger as ledger_mod

    ledger(pg_engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=2)
    conn = _listen(pg_engine)
    try:
        with pytest.raises(RuntimeError), db.session_scope(pg_engine) as s:
            ledger_mod.note_outbox(s, 3)
            raise RuntimeError("rolled back")
        revoke(pg_engine, 2)  # one transaction: two withdrawals, four outbox rows
        with db.session_scope(pg_engine) as s:
            s.connection().exec_driver_sql(f"SELECT pg_notify('{wakeup.CHANNEL}', 'marker')")
        # notifications arrive in commit order: the rolled-back one would come first
        assert _payloads_until_marker(conn) == [""]
    finally:
        conn.close()


def test_every_door_that_makes_deliveries_due_notifies(pg_engine, receiver):
    """Replays, redeliveries and resumed endpoints call ``note_outbox`` too."""
    ledger(pg_engine, receiver, {"crm": "/crm"})
    receiver.set("/crm", status=500)
    with db.session_scope(pg_engine) as s:
        ops.set_status(s, "crm", "pause")
    revoke(pg_engine)
    conn = _listen(pg_engine)
    try:
        with db.session_scope(pg_engine) as s:
            ops.set_status(s, "crm", "resume")  # the held delivery is due again
        eng.deliver_due(pg_engine, options=eng.Options(timeout=5))  # fails: a retry later
        with db.session_scope(pg_engine) as s:
            assert ops.redeliver_since(s, utcnow() - timedelta(hours=1)) == 1
        with db.session_scope(pg_engine) as s:
            [row] = s.exec(select(Delivery)).all()
            ops.replay(s, row.id)
        with db.session_scope(pg_engine) as s:
            s.connection().exec_driver_sql(f"SELECT pg_notify('{wakeup.CHANNEL}', 'marker')")
        assert _payloads_until_marker(conn) == ["", "", ""]
    finally:
        conn.close()


def test_a_listener_whose_connection_dies_reconnects_and_wakes_again(pg_engine, receiver):
    ledger(pg_engine, receiver, {"crm": "/crm"}, subjects_n=2)
    with wakeup.waiter(pg_engine) as listener:
        assert isinstance(listener, wakeup.Listener)
        with pg_engine.connect() as conn:
            killed = conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE query = 'LISTEN {wakeup.CHANNEL}' AND datname = current_database()"
            ).all()
        assert killed == [(True,)]
        # lost notifications are possible while away: the reconnect itself is a wake-up
        assert listener.wait(LONG) is True and listener.reconnects == 1
        with ThreadPoolExecutor(1) as pool:
            woken = pool.submit(listener.wait, LONG)
            revoke(pg_engine)
            assert woken.result(timeout=LONG + 5) is True

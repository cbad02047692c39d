"""What the delivery engine does to keep its pace (issue 11), on SQLite and PostgreSQL, with a real
receiver on loopback: the next batch is sent while the last request of a batch is in flight;
results are recorded in groups (one transaction, lease-fenced per row); a group the database
refuses is recorded one result at a time.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db
from consentflow.delivery import engine as eng
from consentflow.delivery.recording import Recorder
from consentflow.delivery.runlog import log
from consentflow.models import Delivery, DeliveryAttempt, System, utcnow
from tests.delivery.test_hostile_receivers import poisoned_excerpts  # noqa: F401 (a fixture)
from tests.support.webhooks import Captured, Receiver, ledger, revoke

pytestmark = pytest.mark.usefixtures("allow_loopback")


def _rows(engine) -> dict[int, Delivery]:
    with db.session_scope(engine) as s:
        return {d.id: d for d in s.exec(select(Delivery)).all() if d.id is not None}


def _attempts(engine) -> list[DeliveryAttempt]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(DeliveryAttempt).order_by(col(DeliveryAttempt.id))).all())


def _system_id(engine, name: str) -> int:
    with db.session_scope(engine) as s:
        sid = s.exec(select(System.id).where(System.name == name)).one()
    assert sid is not None
    return sid


class HoldSecond:
    """The first request is answered at once; the second is held until a third arrives (or
    10 s pass: then ``released_by_arrival`` stays False)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.third = threading.Event()
        self.released_by_arrival: bool | None = None

    def __call__(self, cap: Captured) -> None:
        with self.lock:
            self.count += 1
            n = self.count
        if n == 2:
            self.released_by_arrival = self.third.wait(10)
        elif n == 3:
            self.third.set()


def test_the_next_batch_is_sent_while_a_batch_is_still_in_flight(engine, receiver: Receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=4)
    gate = HoldSecond()
    receiver.set("/hook", status=200, hook=gate)
    revoke(engine, 4)
    options = eng.Options(timeout=30.0, batch_size=2, per_endpoint=2)

    report = eng.deliver_due(engine, options=options, now=utcnow())

    # batches of 2: the third request (second batch) went out while the second was unanswered
    assert gate.released_by_arrival is True
    assert report.total(eng.DELIVERED) == 4
    assert sorted(receiver.ids("/hook").values()) == [1, 1, 1, 1]
    assert {d.state for d in _rows(engine).values()} == {"delivered"}


def test_a_group_of_results_moves_only_the_rows_still_held(engine, receiver: Receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)
    revoke(engine, 3)
    sid = _system_id(engine, "crm")
    t0 = utcnow()
    lease = timedelta(seconds=30)
    with db.session_scope(engine) as s:  # two claims: two lease tokens in one group
        [a] = eng.claim(s, sid, now=t0, limit=1, lease=lease)
        b, c = eng.claim(s, sid, now=t0 + timedelta(seconds=1), limit=2, lease=lease)
    assert a.lease_token != b.lease_token == c.lease_token
    taken_over = t0 + timedelta(minutes=5)  # b's lease ran out and another worker holds it
    with db.session_scope(engine) as s:
        s.execute(update(Delivery).where(col(Delivery.id) == b.id).values(leased_until=taken_over))
    done_a, done_c = t0 + timedelta(seconds=2), t0 + timedelta(seconds=3)
    results = [
        eng.Result(a, t0, done_a, 3, status=200),
        eng.Result(b, t0, done_a, 3, status=500),
        eng.Result(c, t0, done_c, 3, status=503),
    ]
    with db.session_scope(engine) as s:
        assert eng.record(s, results) == [eng.DELIVERED, eng.SUPERSEDED, eng.RETRIED]

    rows = _rows(engine)
    assert rows[a.id].state == "delivered" and rows[a.id].leased_until is None
    assert rows[a.id].delivered_at == done_a and rows[a.id].attempts == 1
    assert rows[b.id].state == "pending" and rows[b.id].attempts == 0  # untouched
    assert rows[b.id].leased_until == taken_over
    assert rows[c.id].state == "pending" and rows[c.id].attempts == 1
    assert rows[c.id].leased_until is None and rows[c.id].next_attempt_at > done_c
    assert rows[c.id].last_error == "HTTP 503"
    assert sorted(x.delivery_id for x in _attempts(engine)) == sorted([a.id, b.id, c.id])
    with db.session_scope(engine) as s:
        assert s.exec(select(System.last_success_at)).one() == done_a


@pytest.mark.usefixtures("poisoned_excerpts")
def test_a_group_the_database_refuses_is_recorded_one_result_at_a_time(
    engine, receiver: Receiver, caplog
):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)
    revoke(engine, 3)
    now = utcnow()
    with db.session_scope(engine) as s:
        claims = eng.claim(s, _system_id(engine, "crm"), now=now, limit=3, lease=timedelta(hours=1))
    excerpts = ["fine", "poison", "also fine"]
    results = [
        eng.Result(c, now, now, 1, status=200, excerpt=e)
        for c, e in zip(claims, excerpts, strict=True)
    ]
    pool = ThreadPoolExecutor(1)
    groups: list[int] = []

    def submit(fn):
        def work():
            with db.session_scope(engine) as s:
                return fn(s)

        groups.append(1)
        return pool.submit(work)

    noted: list[tuple[str | None, str]] = []
    recorder = Recorder(
        submit, run_id=None, logger=log, recorded=lambda r, o: noted.append((r.error_class, o))
    )

    async def main() -> list[str]:
        return await asyncio.gather(*(recorder.record(r) for r in results))

    try:
        outcomes = asyncio.run(main())
    finally:
        pool.shutdown()

    # one group (refused), then each alone; the poisoned one again without its excerpt
    assert len(groups) == 1 + 3 + 1
    assert outcomes == [eng.DELIVERED] * 3
    assert noted == [(None, eng.DELIVERED), ("Unrecordable", eng.DELIVERED), (None, eng.DELIVERED)]
    stored = {a.delivery_id: a for a in _attempts(engine)}
    assert [stored[c.id].response_excerpt for c in claims] == ["fine", None, "also fine"]
    assert {d.state for d in _rows(engine).values()} == {"delivered"}
    assert "could not be recorded" in caplog.text

"""A run cancelled mid-batch has recorded every answer it received (issue 13).

A real receiver on loopback acknowledges the first requests at once and holds the rest. With
``per_endpoint`` requests in flight, a held request can only arrive after an earlier request's
answer has been read in full (its slot freed), so once every held request has arrived, every
acknowledged answer is in the client's hands: that is when the run is cancelled (an asyncio
cancel, or Ctrl-C through ``asyncio.run``). Every acknowledged delivery is then recorded
delivered, the held ones are not, and a following run sends only the held ones again.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from datetime import timedelta

import pytest
from sqlmodel import col, select

from consentflow import db
from consentflow.delivery import engine as eng
from consentflow.models import Delivery, DeliveryAttempt, utcnow
from tests.support.signals import ctrl_c
from tests.support.webhooks import Captured, Receiver, ledger, revoke

pytestmark = pytest.mark.usefixtures("allow_loopback")

IN_FLIGHT = 4
N = 12  # 4 acknowledged, then 4 held (the batch of 8 is not finished), 4 not yet sent


class AckThenHold:
    """The first ``IN_FLIGHT`` requests are answered 200 at once, the next ``IN_FLIGHT`` held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: list[str] = []
        self.held_all = threading.Event()
        self.release = threading.Event()

    def __call__(self, cap: Captured) -> None:
        with self.lock:
            self.arrived.append(cap.headers["webhook-id"])
            n = len(self.arrived)
        if n > IN_FLIGHT:
            if n == 2 * IN_FLIGHT:
                self.held_all.set()
            self.release.wait(30)

    @property
    def acknowledged(self) -> set[str]:
        with self.lock:
            return set(self.arrived[:IN_FLIGHT])


def cancel_by_task(engine, options, now, report, gate: AckThenHold) -> None:
    async def main() -> None:
        run = asyncio.create_task(eng.adeliver_due(engine, options=options, now=now, report=report))
        assert await asyncio.to_thread(gate.held_all.wait, 30)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())


def cancel_by_sigint(engine, options, now, report, gate: AckThenHold) -> None:
    # asyncio.run turns Ctrl-C into a cancel of its main task (Python's own handler)
    with ctrl_c() as main:

        def interrupt() -> None:
            if gate.held_all.wait(30):
                signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            eng.deliver_due(engine, options=options, now=now, report=report)


@pytest.mark.parametrize("cancel", [cancel_by_task, cancel_by_sigint], ids=["cancel", "sigint"])
def test_cancel_mid_batch_records_every_acknowledged_delivery(engine, receiver: Receiver, cancel):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=N)
    gate = AckThenHold()
    receiver.set("/hook", status=200, hook=gate)
    revoke(engine, N)
    now = utcnow()
    options = eng.Options(timeout=30.0, per_endpoint=IN_FLIGHT, batch_size=2 * IN_FLIGHT)
    report = eng.Report()
    try:
        cancel(engine, options, now, report, gate)
    finally:
        gate.release.set()

    acked = gate.acknowledged
    assert len(acked) == IN_FLIGHT
    with db.session_scope(engine) as s:
        rows = s.exec(select(Delivery).order_by(col(Delivery.id))).all()
        delivered = {d.webhook_id for d in rows if d.state == "delivered"}
        attempts = s.exec(select(DeliveryAttempt)).all()
    assert delivered == acked  # every 2xx the client received is on record, nothing else
    assert len(attempts) == IN_FLIGHT and {a.status_code for a in attempts} == {200}
    assert report.by_system() == {"crm": {eng.DELIVERED: IN_FLIGHT}}  # the caller's counts

    # a following run (after the held rows' lease) sends everything but the acknowledged ones
    receiver.set("/hook", status=200)
    later = now + options.lease_for() + timedelta(seconds=1)
    assert eng.deliver_due(engine, options=options, now=later).total(eng.DELIVERED) == N - 4
    sent = receiver.ids("/hook")
    assert len(sent) == N
    assert {i: sent[i] for i in acked} == dict.fromkeys(acked, 1)  # never sent twice

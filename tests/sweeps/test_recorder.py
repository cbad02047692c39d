"""The email outcomes' recorder (``sweeps._recorder``): a group commit. Outcomes that arrive while
a record transaction runs are written together by the next one, each future done only once its
own transaction has committed; a group that fails is recorded one outcome at a time, and an
outcome that fails again is recorded without the server's text."""

from __future__ import annotations

import threading

from consentflow.mail import SendResult, SendStatus
from consentflow.sweeps._recorder import Recorder

SENT = SendResult(SendStatus.SENT, 250)


def test_outcomes_arriving_during_a_record_are_written_together() -> None:
    calls: list[list[int]] = []
    first_running, let_go = threading.Event(), threading.Event()

    def record(items: list[tuple[int, SendResult]]) -> None:
        calls.append([i for i, _ in items])
        if len(calls) == 1:
            first_running.set()
            assert let_go.wait(10)

    recorder = Recorder(record, 4, str)
    first = recorder.submit(0, SENT)
    assert first_running.wait(10)
    later = [recorder.submit(i, SENT) for i in (1, 2, 3)]
    assert first is not None and not first.done()  # its transaction has not committed yet
    assert all(f is not None and not f.done() for f in later)
    let_go.set()
    recorder.finish(lambda i: SENT)
    assert calls == [[0], [1, 2, 3]]
    assert first.done() and all(f is not None and f.done() for f in later)
    assert recorder.failure is None and not recorder.broken.is_set()
    assert recorder.submit(0, SENT) is None  # an outcome is recorded once


def test_a_refused_group_is_recorded_one_outcome_at_a_time() -> None:
    calls: list[list[tuple[int, str | None]]] = []
    block, let_go = threading.Event(), threading.Event()

    def record(items: list[tuple[int, SendResult]]) -> None:
        calls.append([(i, r.error) for i, r in items])
        if len(calls) == 1:
            block.set()
            assert let_go.wait(10)
            return
        if any(i == 2 and r.error == "poison" for i, r in items):
            raise ValueError("the database refuses this text")

    recorder = Recorder(record, 4, str)
    recorder.submit(0, SENT)
    assert block.wait(10)
    for i in (1, 2, 3):
        recorder.submit(i, SendResult(SendStatus.BOUNCED, 550, "poison" if i == 2 else None))
    let_go.set()
    recorder.finish(lambda i: SENT)

    assert calls[0] == [(0, None)]
    assert calls[1] == [(1, None), (2, "poison"), (3, None)]  # the group: refused
    alone = calls[2:]
    assert alone[:2] == [[(1, None)], [(2, "poison")]]
    assert alone[2][0][0] == 2 and "could not be recorded" in (alone[2][0][1] or "")
    assert alone[3] == [(3, None)]
    assert recorder.failure is None  # every outcome is on record

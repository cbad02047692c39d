"""Recording each email's outcome as soon as the server answers it (step 3 of the claim protocol
in ``claims``).

A ``Recorder`` belongs to one batch. ``submit`` hands it one message's outcome (from the mailer's
event loop, or from the caller's thread) and returns the future of its record, which the mailer
waits for before the connection sends its next message (``mail.Mailer.send``). Records run in a
thread of the recorder's own, in the order submitted, as a group commit: the outcomes submitted
while a record transaction runs are written together by the next one (with two connections,
one transaction for both of their answers instead of two), and each outcome's future is done
when its transaction has committed. Each message's outcome is submitted at most once.

Failure modes:

* A group whose transaction fails is recorded again one outcome at a time; an outcome whose
  record fails (the database refused what the server wrote, a dropped connection) is tried
  once more without the server's text (status and code kept; the error says the reply could not
  be recorded), so one bad answer never loses the outcome, nor stops the others.
* If that fails too (the database is gone), the message stays ``claimed`` (released after the
  lease, see ``claims.release_stale_claims``), ``broken`` is set so the mailer sends no more
  messages, the other outcomes are still tried, and ``failure`` says what happened: the caller
  raises it once the batch is recorded.
* ``finish`` waits for every record to commit even when the waiting thread is interrupted
  (KeyboardInterrupt, Prefect's TerminationSignal): a record is never cut short by a cancel, and
  the interrupt is re-raised once the records are done. Signals never reach the recorder's
  thread, so a transaction in it is never interrupted half-way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from consentflow.mail import SendResult

log = logging.getLogger("consentflow.sweeps")

#: Records messages' outcomes (by their index in the batch) in one transaction.
Record = Callable[[list[tuple[int, SendResult]]], None]


class Recorder:
    """Records a batch's outcomes as they arrive; see the module docstring."""

    def __init__(self, record: Record, size: int, describe: Callable[[int], str]) -> None:
        self._record = record
        self._describe = describe
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="consentflow-mail-record")
        self._lock = threading.Lock()
        self._submitted = [False] * size
        self._closed = False
        self._queue: list[tuple[int, SendResult, Future[None]]] = []
        #: Set when an outcome could not be recorded at all: send no more messages.
        self.broken = threading.Event()
        #: What made recording fail for good (the first such error), if anything did.
        self.failure: BaseException | None = None

    def submit(self, index: int, result: SendResult) -> Future[None] | None:
        """Record ``result`` for message ``index`` (once: a second outcome for it is ignored);
        the future of its record (None if ignored). Safe from any thread."""
        with self._lock:
            if self._closed or self._submitted[index]:
                return None
            self._submitted[index] = True
            done: Future[None] = Future()
            self._queue.append((index, result, done))
            self._pool.submit(self._drain)  # a drain finding the queue empty returns at once
            return done

    def pending(self) -> list[int]:
        """The messages whose outcome has not been submitted."""
        with self._lock:
            return [i for i, done in enumerate(self._submitted) if not done]

    def finish(self, rest: Callable[[int], SendResult]) -> None:
        """Submit ``rest(i)`` for every message without an outcome, then wait for every record
        to commit (through interrupts: one is re-raised after the wait)."""
        interrupted: BaseException | None = None
        try:
            for index in self.pending():
                self.submit(index, rest(index))
        except BaseException as exc:  # the records already submitted still commit
            interrupted = exc
        with self._lock:
            self._closed = True
        while True:
            try:
                self._pool.shutdown(wait=True)
                break
            except BaseException as exc:
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def _drain(self) -> None:
        """Record every outcome queued so far in one transaction (one at a time if that
        fails); then their futures are done."""
        with self._lock:
            group, self._queue = self._queue, []
        if not group:
            return
        try:
            self._record([(index, result) for index, result, _ in group])
        except BaseException:  # the recorder's thread: no interrupt arrives here
            for index, result, _ in group:
                self._one(index, result)
        for _, _, done in group:
            done.set_result(None)

    def _one(self, index: int, result: SendResult) -> None:
        try:
            self._record([(index, result)])
            return
        except BaseException as exc:  # the recorder's thread: no interrupt arrives here
            first = exc
        log.error(
            "the outcome of email %s (%s) could not be recorded (%s): recording it without "
            "the server's reply",
            self._describe(index),
            result.status.value,
            type(first).__name__,
        )
        plain = replace(
            result,
            error=f"the server's reply could not be recorded ({type(first).__name__})",
        )
        try:
            self._record([(index, plain)])
        except BaseException as exc:
            log.error(
                "the outcome of email %s could not be recorded (%s): it stays claimed until "
                "the lease passes; sending stops",
                self._describe(index),
                type(exc).__name__,
            )
            self.failure = self.failure or exc
            self.broken.set()

"""Recording a delivery run's results as their requests complete: group commit (step 4 of
``engine``).

Each result is queued as its request completes and written by the next record transaction
(``outbox.record``), together with every other result that completed meanwhile (at most
``Recorder.GROUP`` per transaction); the request's task waits for that commit. Under load this
writes one transaction per handful of answers instead of one per answer; when idle a result is
written at once, with no added wait.

Failure modes:

* A group whose transaction fails is recorded again one result at a time, so one bad answer
  never loses the others; a result that still fails is recorded without what the receiver
  wrote (``Result.unrecordable``: status and times kept). Only a failure of that too (the
  database is gone) fails that result's caller, and every result queued behind it.
* A cancel of the caller waits for its result's record, then goes on; a cancel of the task
  writing a group (the event loop shutting down) waits for the transaction and still hands
  every committed outcome over, so no acknowledged delivery goes unrecorded or uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlmodel import Session

from consentflow.delivery import runlog
from consentflow.delivery.outbox import Result, record

#: Runs a unit of work in a transaction of its own, in a database thread.
Submit = Callable[[Callable[[Session], Any]], "Future[Any]"]


class Recorder:
    """Group commit of one run's results; see the module docstring."""

    GROUP = 200

    def __init__(
        self,
        submit: Submit,
        *,
        run_id: str | None,
        logger: runlog.Logger,
        recorded: Callable[[Result, str], None],
    ) -> None:
        self._submit = submit
        self._run_id = run_id
        self._logger = logger
        self._recorded = recorded  # called once per result, as its record commits
        self._queue: list[tuple[Result, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, result: Result) -> str:
        """``result`` recorded: its outcome. A cancel waits for the record, then goes on."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((result, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await done
            raise

    async def _write(self) -> None:
        group: list[tuple[Result, asyncio.Future[str]]] = []
        try:
            while self._queue:
                group, self._queue = self._queue[: self.GROUP], self._queue[self.GROUP :]
                results = [r for r, _ in group]
                try:
                    outcomes = list(zip(results, await self._committed(results), strict=True))
                except Exception:
                    outcomes = [await self._one(r) for r in results]
                for (_, done), (result, outcome) in zip(group, outcomes, strict=True):
                    self._recorded(result, outcome)
                    done.set_result(outcome)
                group = []
        except BaseException as exc:  # the database is gone (or a cancel came between groups)
            for _, done in group + self._queue:
                if not done.done():
                    done.set_exception(exc)
            self._queue = []
            raise

    async def _committed(self, results: list[Result]) -> list[str]:
        """``record`` ``results`` in one transaction; a cancel waits for its commit and the
        outcomes are still returned (the caller hands them over before anything else runs)."""

        def work(session: Session) -> list[str]:
            return record(session, results, run_id=self._run_id)

        future = self._submit(work)
        try:
            outcomes: list[str] = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            outcomes = future.result()  # blocks: a few milliseconds, once, while the run stops
        return outcomes

    async def _one(self, result: Result) -> tuple[Result, str]:
        """``result`` alone; if that fails, without what the receiver wrote."""
        try:
            [outcome] = await self._committed([result])
            return result, outcome
        except Exception as exc:
            c = result.claimed
            self._logger.error(
                "the answer to webhook %s from %s, attempt %d, could not be recorded (%s): "
                "recording the attempt without it",
                c.webhook_id,
                c.system,
                c.attempts + 1,
                type(exc).__name__,
            )
            plain = result.unrecordable(exc)
            [outcome] = await self._committed([plain])
            return plain, outcome

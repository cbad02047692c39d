"""Sending consent emails (aiosmtplib): a pool of reused SMTP connections, one outcome per message.

A ``Mailer`` keeps a small pool of SMTP connections open for a whole flow run (on an event loop
of its own, so the synchronous flows can use it) and sends each batch over them. Per message the
outcome is exactly one of:

* ``sent``: the server accepted it (2xx). Recorded once, whatever happens to the other messages.
* ``deferred``: a 4xx, a timeout or a lost connection; the caller leaves the item due, so a later
  run tries again.
* ``bounced``: a 5xx about the recipient; the caller suppresses the address.
* ``failed``: this message cannot be sent as things stand, and sending it again unchanged would
  fail the same way: its address needs SMTPUTF8 (a non-ASCII local part) and the server does not
  offer it, or it could not be built, or anything unexpected happened to it alone (the
  connection is then dropped, since its state is unknown). The reason is recorded. It is NOT
  retried (the caller treats the item as handled, like a sent message, so no run repeats it) and
  the address is NOT suppressed (the person did nothing wrong: once the server offers SMTPUTF8,
  their next message goes out).

``send`` takes the messages as a lazy iterable too: it is consumed in the caller's thread while
the messages already built are sent, so building (rendering, composing) overlaps with waiting
for the server; an exception from the iterable ends the batch once the built messages are sent
and their outcomes handed over, and is raised as it was.

A failure of one message never changes the outcome of another: every per-message exception
becomes that message's result, and results are kept as they arrive, so even an error that stops
the whole batch leaves the messages already accepted recorded ``sent``.

Each outcome is handed over as soon as the server answers (``send``'s ``on_result``, called on
the mailer's event loop): when it returns a future (the caller's record of that outcome), the
connection sends its next message only once that future is done, so at any instant at most one
message per connection is answered but not yet recorded. ``stop`` (set by the caller, e.g. when
it can no longer record) ends the batch after the messages in flight; the rest come back
``deferred``. A cancel of ``send`` (KeyboardInterrupt, Prefect's TerminationSignal, a timeout)
stops sending at once: a message in flight then is ``deferred`` with "outcome unknown" (the
server may have taken it), every answer already received has been handed over, and ``send``
returns control (re-raising) only after the sending coroutine has ended.

A server that cannot be reached (or refuses our sender or credentials) is not the recipient's
fault: the messages not yet sent come back ``deferred`` and ``SendReport.unavailable`` says why,
so the caller can fail the batch without marking anything sent that was not sent.

Addresses never leave this module in logs or error texts: server replies are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib

from consentflow.mail.message import Outgoing
from consentflow.mail.privacy import redact
from consentflow.settings import get_settings

log = logging.getLogger("consentflow.mail")

#: The reason recorded for a non-ASCII address on a server without SMTPUTF8.
NEEDS_SMTPUTF8 = (
    "the address has non-ASCII characters before the @ and the mail server does not offer "
    "SMTPUTF8 (RFC 6531): not sent"
)


class SendStatus(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class SendReport:
    """One result per message, in order; ``unavailable`` says why sending stopped, if it did."""

    results: list[SendResult]
    unavailable: str | None = None


#: ``send``'s per-message callback: (index in the batch, outcome) -> the caller's record of it
#: (a future the connection waits for before its next message), or None.
OnResult = Callable[[int, "SendResult"], "Future[Any] | None"]

#: The outcome of a message that was in flight when sending was cancelled.
INTERRUPTED = "interrupted while in flight: outcome unknown (the server may have accepted it)"


class _BuildFailed(Exception):
    """Building a message (the caller's iterable) failed: re-raised as it was by ``send``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class MailUnavailable(Exception):
    """The SMTP server could not be used; the messages not yet sent were left due."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool | None = None
    timeout: float = 30.0
    pool_size: int = 2

    @classmethod
    def from_settings(cls) -> SmtpConfig:
        s = get_settings()
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            starttls=s.smtp_starttls,
            timeout=s.smtp_timeout,
            pool_size=max(1, s.smtp_pool_size),
        )


#: Transport problems: the message in flight is deferred and the connection dropped.
_TRANSPORT = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)
#: Replies about us rather than the recipient: stop, suppress nobody.
_OUR_FAULT = (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPAuthenticationError)


def _classify(code: int, message: str) -> SendResult:
    status = SendStatus.BOUNCED if 500 <= code < 600 else SendStatus.DEFERRED
    return SendResult(status, code, redact(f"{code} {message}"))


class Mailer:
    """A pool of reused SMTP connections; use as a context manager, then ``send`` batches.

    Connections are opened lazily (a run with nothing to send never connects), probed with
    NOOP before each batch, reopened when lost, and closed on exit.
    """

    def __init__(self, config: SmtpConfig | None = None) -> None:
        self.config = config or SmtpConfig.from_settings()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conns: list[aiosmtplib.SMTP | None] = [None] * self.config.pool_size
        #: How many connections were opened over the mailer's life (tests check reuse).
        self.connections_opened = 0
        self._warned_one_click = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Mailer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="consentflow-mailer", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is None:
            return
        # Best effort: a server that went away times its side of the connections out anyway.
        with contextlib.suppress(Exception):
            self._run(self._close_all(), timeout=self.config.timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("use the Mailer as a context manager: `with Mailer() as m:`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- sending -----------------------------------------------------------------------------

    def send(
        self,
        messages: Iterable[Outgoing],
        on_result: OnResult | None = None,
        stop: threading.Event | None = None,
    ) -> SendReport:
        """Send ``messages`` over the pool; never raises for SMTP trouble (see ``SendReport``).

        ``messages`` may be a lazy iterable (a generator building each message): it is consumed
        in the caller's thread while the messages already built are being sent, so building the
        next messages overlaps with waiting for the server. An exception it raises ends the
        batch: the messages already built are sent (their results handed over), then it is
        re-raised. Results are kept as they arrive: should sending stop on an unexpected error,
        the messages already accepted stay ``sent`` and only the others come back ``deferred``.
        ``on_result`` and ``stop``: see the module docstring. A cancel (any ``BaseException``
        while waiting) stops the sending, waits for it to end, and is re-raised."""
        if isinstance(messages, Sequence) and not messages:
            return SendReport([])
        results: list[SendResult | None] = []
        try:
            reason = self._send_batch(iter(messages), results, on_result, stop or threading.Event())
        except _BuildFailed as failed:
            raise failed.error from None
        except Exception as exc:
            reason = f"sending stopped: {_describe(exc)}"
            log.error("%s", reason)
        if reason is None and stop is not None and stop.is_set():
            reason, unavailable = "sending stopped by the caller", None
        else:
            unavailable = reason
        final = [r or SendResult(SendStatus.DEFERRED, None, f"not sent: {reason}") for r in results]
        return SendReport(final, unavailable)

    def _note(self, message: Outgoing) -> None:
        if message.one_click_omitted and not self._warned_one_click:
            self._warned_one_click = True  # once per mailer, that is once per flow run
            log.warning(
                "one-click unsubscribe left out: CONSENTFLOW_PUBLIC_URL (%s) is not https, and "
                "RFC 8058 requires https for List-Unsubscribe-Post; emails keep List-Unsubscribe",
                _origin(get_settings().public_url),
            )

    def _send_batch(
        self,
        messages: Iterator[Outgoing],
        results: list[SendResult | None],
        on_result: OnResult | None,
        stop: threading.Event,
    ) -> str | None:
        """``_send_all`` on the mailer's loop, fed from ``messages`` as this thread builds them;
        a cancel of the caller cancels it and returns only once it has ended (every answer
        received handed over), then is re-raised."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("use the Mailer as a context manager: `with Mailer() as m:`")
        ended = threading.Event()
        queue: asyncio.Queue[tuple[int, Outgoing] | None] = asyncio.Queue()

        async def run() -> str | None:
            try:
                return await self._send_all(queue, results, on_result, stop)
            finally:
                ended.set()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            try:
                while not (future.done() or stop.is_set()):
                    message = next(messages, None)
                    if message is None:
                        break
                    self._note(message)
                    results.append(None)
                    loop.call_soon_threadsafe(queue.put_nowait, (len(results) - 1, message))
            except Exception as exc:  # building a message failed: send those built, then raise
                self._end(queue)
                future.result()
                raise _BuildFailed(exc) from exc
            self._end(queue)
            reason: str | None = future.result()
            return reason
        except _BuildFailed:
            raise
        except BaseException:
            future.cancel()
            _wait_through(ended, self.config.timeout + 5)
            raise

    def _end(self, queue: asyncio.Queue[tuple[int, Outgoing] | None]) -> None:
        """No more messages: one end mark per connection."""
        assert self._loop is not None
        for _ in self._conns:
            self._loop.call_soon_threadsafe(queue.put_nowait, None)

    async def _connection(self, slot: int) -> aiosmtplib.SMTP:
        conn = self._conns[slot]
        if conn is not None and conn.is_connected:
            return conn
        cfg = self.config
        conn = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            start_tls=cfg.starttls,
            timeout=cfg.timeout,
        )
        await conn.connect()
        self._conns[slot] = conn
        self.connections_opened += 1
        return conn

    async def _drop(self, slot: int) -> None:
        self._forget(slot)

    def _forget(self, slot: int) -> None:
        """Close a connection whose state is unknown (it is reopened when needed)."""
        conn, self._conns[slot] = self._conns[slot], None
        if conn is not None:
            conn.close()

    async def _probe(self, slot: int) -> None:
        conn = self._conns[slot]
        if conn is None:
            return
        try:
            await conn.noop()
        except (aiosmtplib.SMTPException, *_TRANSPORT):
            await self._drop(slot)

    async def _send_all(
        self,
        queue: asyncio.Queue[tuple[int, Outgoing] | None],
        results: list[SendResult | None],
        on_result: OnResult | None,
        stop: threading.Event,
    ) -> str | None:
        """Send what ``queue`` brings (until an end mark per connection), filling ``results``
        (one per message, as each arrives, each handed to ``on_result``); why sending stopped,
        if it did."""
        halt: list[str] = []

        async def worker(slot: int) -> None:
            await self._probe(slot)
            while not halt and not stop.is_set():
                item = await queue.get()
                if item is None:
                    return
                index, message = item
                try:
                    conn = await self._connection(slot)
                except Exception as exc:  # any reason not to reach the server stops the batch
                    halt.append(f"cannot connect to the SMTP server: {_describe(exc)}")
                    return
                try:
                    result, fatal = await self._send_one(conn, slot, message)
                except asyncio.CancelledError:  # the server may have taken it: unknown
                    self._forget(slot)
                    unknown = SendResult(SendStatus.DEFERRED, None, INTERRUPTED)
                    _hand_over(results, index, unknown, on_result)
                    raise
                if fatal:
                    halt.append(fatal)
                recorded = _hand_over(results, index, result, on_result)
                if recorded is not None:  # the next message only once this one is recorded
                    await asyncio.shield(asyncio.wrap_future(recorded))

        outcomes = await asyncio.gather(
            *(worker(slot) for slot in range(len(self._conns))), return_exceptions=True
        )
        cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
        if cancelled:
            raise cancelled[0]
        halt += [f"sending stopped: {_describe(o)}" for o in outcomes if o is not None]
        return halt[0] if halt else None

    async def _send_one(
        self, conn: aiosmtplib.SMTP, slot: int, message: Outgoing
    ) -> tuple[SendResult, str | None]:
        """The outcome of one message, and a reason to stop the batch if the fault is ours."""
        try:
            await conn.sendmail(
                message.sender,
                [message.recipient],
                message.data,
                mail_options=["SMTPUTF8"] if message.smtputf8 else None,
            )
        except aiosmtplib.SMTPNotSupported as exc:  # raised before MAIL FROM: nothing was sent
            reason = NEEDS_SMTPUTF8 if message.smtputf8 else _describe(exc)
            return SendResult(SendStatus.FAILED, None, reason), None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return _classify(refused.code, refused.message), None
        except _OUR_FAULT as exc:
            reason = f"the SMTP server refused us: {redact(f'{exc.code} {exc.message}')}"
            return SendResult(SendStatus.DEFERRED, exc.code, reason), reason
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code in (421, 530):  # closing down, or authentication required
                await self._drop(slot)
                reason = redact(f"{exc.code} {exc.message}")
                return SendResult(SendStatus.DEFERRED, exc.code, reason), reason
            return _classify(exc.code, exc.message), None
        except _TRANSPORT as exc:
            # Possibly delivered if the connection died after DATA: the item stays due, so a
            # later run may send it again (at least once, never silently lost).
            await self._drop(slot)
            return SendResult(SendStatus.DEFERRED, None, _describe(exc)), None
        except aiosmtplib.SMTPException as exc:
            await self._drop(slot)
            return SendResult(SendStatus.DEFERRED, None, _describe(exc)), None
        except Exception as exc:  # this message's outcome alone; the connection's state is unknown
            await self._drop(slot)
            return SendResult(SendStatus.FAILED, None, _describe(exc)), None
        return SendResult(SendStatus.SENT, 250), None

    async def _close_all(self) -> None:
        for slot, conn in enumerate(self._conns):
            if conn is None:
                continue
            try:
                if conn.is_connected:
                    await conn.quit()
            except (aiosmtplib.SMTPException, *_TRANSPORT):
                conn.close()
            self._conns[slot] = None


def _hand_over(
    results: list[SendResult | None], index: int, result: SendResult, on_result: OnResult | None
) -> Future[Any] | None:
    """Keep ``result`` and hand it to ``on_result``; a callback that fails is logged and leaves
    the result to the report (the caller records it from there)."""
    results[index] = result
    if on_result is None:
        return None
    try:
        return on_result(index, result)
    except Exception:
        log.exception("the outcome of message %d could not be handed over", index)
        return None


def _wait_through(event: threading.Event, timeout: float) -> None:
    """Wait for ``event`` (up to ``timeout``) even if interrupted meanwhile; an interrupt is
    re-raised once the wait is over."""
    interrupted: BaseException | None = None
    while True:
        try:
            event.wait(timeout)
            break
        except BaseException as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url[:100]


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return redact(f"{exc.__class__.__name__}: {text}")

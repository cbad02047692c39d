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

A failure of one message never changes the outcome of another: every per-message exception
becomes that message's result, and results are kept as they arrive, so even an error that stops
the whole batch leaves the messages already accepted recorded ``sent``.

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
from collections.abc import Sequence
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

    def send(self, messages: Sequence[Outgoing]) -> SendReport:
        """Send ``messages`` over the pool; never raises for SMTP trouble (see ``SendReport``).

        Results are kept as they arrive: should sending stop on an unexpected error, the
        messages already accepted stay ``sent`` and only the others come back ``deferred``."""
        if not messages:
            return SendReport([])
        if not self._warned_one_click and any(m.one_click_omitted for m in messages):
            self._warned_one_click = True  # once per mailer, that is once per flow run
            log.warning(
                "one-click unsubscribe left out: CONSENTFLOW_PUBLIC_URL (%s) is not https, and "
                "RFC 8058 requires https for List-Unsubscribe-Post; emails keep List-Unsubscribe",
                _origin(get_settings().public_url),
            )
        results: list[SendResult | None] = [None] * len(messages)
        try:
            reason = self._run(self._send_all(list(messages), results))
        except Exception as exc:
            reason = f"sending stopped: {_describe(exc)}"
            log.error("%s", reason)
        final = [r or SendResult(SendStatus.DEFERRED, None, f"not sent: {reason}") for r in results]
        return SendReport(final, reason)

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
        self, messages: list[Outgoing], results: list[SendResult | None]
    ) -> str | None:
        """Fill ``results`` (one per message, as each arrives); why sending stopped, if it did."""
        pending = list(reversed(list(enumerate(messages))))
        stop: list[str] = []

        async def worker(slot: int) -> None:
            await self._probe(slot)
            while pending and not stop:
                index, message = pending.pop()
                try:
                    conn = await self._connection(slot)
                except Exception as exc:  # any reason not to reach the server stops the batch
                    pending.append((index, message))
                    stop.append(f"cannot connect to the SMTP server: {_describe(exc)}")
                    return
                results[index], fatal = await self._send_one(conn, slot, message)
                if fatal:
                    stop.append(fatal)

        slots = min(self.config.pool_size, len(messages))
        outcomes = await asyncio.gather(
            *(worker(slot) for slot in range(slots)), return_exceptions=True
        )
        stop += [f"sending stopped: {_describe(o)}" for o in outcomes if o is not None]
        return stop[0] if stop else None

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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url[:100]


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return redact(f"{exc.__class__.__name__}: {text}")

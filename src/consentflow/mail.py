"""Consent emails: render them (Jinja2), build them (MIME), send them (aiosmtplib, pooled).

Rendering: ``templates/email/{locale}/{kind}.subject.txt``, ``{kind}.txt`` and ``{kind}.html``
(installed as the package ``consentflow.templates``). HTML is autoescaped, text is not; a locale
falls back from ``fr-CA`` to ``fr`` to ``en``. Every message has both parts.

Sending: a ``Mailer`` keeps a small pool of SMTP connections open for a whole flow run (on an
event loop of its own, so the synchronous flows can use it) and sends each batch over them. Per
message the outcome is one of:

* ``sent``: the server accepted it (2xx);
* ``deferred``: a 4xx, a timeout or a lost connection; the caller leaves the item due;
* ``bounced``: a 5xx about the recipient; the caller suppresses the address.

A server that cannot be reached (or refuses our sender or credentials) is not the recipient's
fault: the messages not yet sent come back ``deferred`` and ``SendReport.unavailable`` says why,
so the caller can fail the batch without marking anything sent that was not sent.

Addresses never leave this module in logs or error texts: server replies are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.charset
import email.header
import email.policy
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import jinja2
import markupsafe

from consentflow import keys
from consentflow.settings import get_settings

log = logging.getLogger("consentflow.mail")

# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


class Kind(StrEnum):
    """One template set per kind of message (also ``EmailMessage.kind``)."""

    RENEWAL_REMINDER = "renewal_reminder"
    COLLECTION_FOLLOWUP = "collection_followup"
    RECONSENT_REQUEST = "reconsent_request"
    #: A fresh preference-page link a person asked for (``consentflow link``, the new-link page).
    PREFERENCE_LINK = "preference_link"


DEFAULT_LOCALE = "en"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment: autoescaping for ``.html`` only, strict about missing values."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("consentflow.templates", "email"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def locale_chain(locale: str | None) -> list[str]:
    """``fr-CA`` -> ``["fr-ca", "fr", "en"]``: the locales tried, most specific first."""
    tag = (locale or DEFAULT_LOCALE).strip().lower().replace("_", "-")
    parts = [p for p in tag.split("-") if p]
    chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return chain


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    locale: str


def render(kind: Kind | str, locale: str | None, context: dict[str, Any]) -> Rendered:
    """The subject line, plain text and HTML of one message in the best available locale."""
    env = environment()
    kind = Kind(kind)
    for loc in locale_chain(locale):
        try:
            text_t = env.get_template(f"{loc}/{kind.value}.txt")
        except jinja2.TemplateNotFound:
            continue
        subject = env.get_template(f"{loc}/{kind.value}.subject.txt").render(context)
        return Rendered(
            subject=" ".join(subject.split()),
            text=text_t.render(context),
            html=env.get_template(f"{loc}/{kind.value}.html").render(context),
            locale=loc,
        )
    raise jinja2.TemplateNotFound(f"{DEFAULT_LOCALE}/{kind.value}.txt")


# --------------------------------------------------------------------------------------------
# Building messages
# --------------------------------------------------------------------------------------------

#: Built with the compat32 MIME classes (about three times faster than ``EmailMessage``, which
#: parses every header it is given) and generated without folding, so a one-click URL reaches
#: the client intact instead of being cut into RFC 2047 encoded words. Bodies are
#: quoted-printable UTF-8, so servers without 8BITMIME take them too.
_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
_UTF8_QP = email.charset.Charset("utf-8")
_UTF8_QP.body_encoding = email.charset.QP


def _header(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value must be a single line")
    if value.isascii():
        return value
    return email.header.Header(value, "utf-8").encode(linesep="\r\n")


def _part(body: str, subtype: str) -> MIMEText:
    # typeshed says str, but MIMEText takes a Charset too (that is how QP is chosen).
    part = MIMEText(body, subtype, _UTF8_QP)  # type: ignore[arg-type]
    del part["MIME-Version"]
    return part


def mail_domain(sender: str | None = None) -> str:
    address = parseaddr(sender or get_settings().mail_from)[1]
    return address.rpartition("@")[2] or "localhost"


def new_message_id(sender: str | None = None) -> str:
    """A globally unique Message-ID (``<...@domain of the From address>``)."""
    return make_msgid(domain=mail_domain(sender))


@dataclass(frozen=True)
class Outgoing:
    """One message ready for the wire. ``recipient`` stays out of reprs and logs."""

    message_id: str
    sender: str
    recipient: str = field(repr=False)
    data: bytes = field(repr=False)
    #: It has a withdrawal link but no ``List-Unsubscribe-Post``: the link is not https.
    one_click_omitted: bool = False


def compose(
    rendered: Rendered,
    *,
    to: str,
    message_id: str,
    unsubscribe_url: str | None = None,
    sender: str | None = None,
) -> Outgoing:
    """A multipart/alternative message (text, then HTML).

    ``unsubscribe_url``: the withdrawal link; adds ``List-Unsubscribe: <URL>`` and, when the URL
    is https, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 one-click, which
    requires https; ``Outgoing.one_click_omitted`` marks a message that had to go without it,
    and ``Mailer`` logs that once). The DKIM signature RFC 8058 also asks for is the sending
    MTA's job.
    """
    sender = sender or get_settings().mail_from
    name, address = parseaddr(sender)
    msg = MIMEMultipart("alternative")
    msg["From"] = _header(formataddr((name, address), "utf-8"))
    msg["To"] = _header(to)
    msg["Subject"] = _header(rendered.subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = _header(message_id)
    msg["Auto-Submitted"] = "auto-generated"
    msg["Content-Language"] = _header(rendered.locale)
    one_click_omitted = False
    if unsubscribe_url:
        msg["List-Unsubscribe"] = _header(f"<{unsubscribe_url}>")
        if unsubscribe_url.lower().startswith("https://"):
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        else:
            one_click_omitted = True
    msg.attach(_part(rendered.text, "plain"))
    msg.attach(_part(rendered.html, "html"))
    return Outgoing(message_id, address, to, msg.as_bytes(policy=_POLICY), one_click_omitted)


# --------------------------------------------------------------------------------------------
# Suppression: addresses are kept as keyed hashes only
# --------------------------------------------------------------------------------------------


def address_hash(secret: bytes, address: str) -> str:
    """The suppression key of an address: HMAC-SHA256 of its lowercased form."""
    normalised = address.strip().lower()
    return keys.derive(secret, "email:", normalised).hex()


_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


def redact(text: str, limit: int = 300) -> str:
    """A server reply fit to store: addresses replaced, one line, bounded length."""
    return _ADDRESS.sub("<address>", " ".join(text.split()))[:limit]


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


class SendStatus(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


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
            raise RuntimeError("use the Mailer as a context manager: `with Mailer() as m:`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- sending -----------------------------------------------------------------------------

    def send(self, messages: Sequence[Outgoing]) -> SendReport:
        """Send ``messages`` over the pool; never raises for SMTP trouble (see ``SendReport``)."""
        if not messages:
            return SendReport([])
        if not self._warned_one_click and any(m.one_click_omitted for m in messages):
            self._warned_one_click = True  # once per mailer, that is once per flow run
            log.warning(
                "one-click unsubscribe left out: CONSENTFLOW_PUBLIC_URL (%s) is not https, and "
                "RFC 8058 requires https for List-Unsubscribe-Post; emails keep List-Unsubscribe",
                _origin(get_settings().public_url),
            )
        return self._run(self._send_all(list(messages)))

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

    async def _send_all(self, messages: list[Outgoing]) -> SendReport:
        results: list[SendResult | None] = [None] * len(messages)
        pending = list(reversed(list(enumerate(messages))))
        stop: list[str] = []

        async def worker(slot: int) -> None:
            await self._probe(slot)
            while pending and not stop:
                index, message = pending.pop()
                try:
                    conn = await self._connection(slot)
                except (aiosmtplib.SMTPException, *_TRANSPORT) as exc:
                    pending.append((index, message))
                    stop.append(f"cannot connect to the SMTP server: {_describe(exc)}")
                    return
                result, fatal = await self._send_one(conn, slot, message)
                results[index] = result
                if fatal:
                    stop.append(fatal)

        slots = min(self.config.pool_size, len(messages))
        await asyncio.gather(*(worker(slot) for slot in range(slots)))
        reason = stop[0] if stop else None
        final = [r or SendResult(SendStatus.DEFERRED, None, f"not sent: {reason}") for r in results]
        return SendReport(final, reason)

    async def _send_one(
        self, conn: aiosmtplib.SMTP, slot: int, message: Outgoing
    ) -> tuple[SendResult, str | None]:
        """The outcome of one message, and a reason to stop the batch if the fault is ours."""
        try:
            await conn.sendmail(message.sender, [message.recipient], message.data)
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


# --------------------------------------------------------------------------------------------
# Operator alerts
# --------------------------------------------------------------------------------------------


def send_alert(to: str, subject: str, text: str) -> str:
    """Email an operational alert (plain text, with an escaped HTML copy) to an operator address,
    e.g. ``CONSENTFLOW_COMPLIANCE_EMAIL``; returns its Message-ID. Raises ``MailUnavailable``
    if the server did not accept it. Alerts name systems and ids, never people."""
    html = (
        '<!DOCTYPE html><html><body><pre style="white-space:pre-wrap">'
        f"{markupsafe.escape(text)}</pre></body></html>\n"
    )
    message_id = new_message_id()
    outgoing = compose(Rendered(subject, text, html, DEFAULT_LOCALE), to=to, message_id=message_id)
    with Mailer(SmtpConfig.from_settings()) as mailer:
        report = mailer.send([outgoing])
    result = report.results[0]
    if result.status is not SendStatus.SENT:
        raise MailUnavailable(result.error or result.status.value)
    return message_id

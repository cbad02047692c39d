"""Building consent emails with the standard library's ``EmailMessage`` API.

Headers are made and folded by ``email.policy.SMTP``: CRLF line ends, lines folded where they
can be, RFC 2047 encoded words only in unstructured text (``Subject``) and display names, never
inside an address (RFC 2047 section 5). Two corrections to the standard library (Python 3.11):

* the policy folds at 76 characters, not 78: its folder sizes an encoded word to the line, so
  at 78 it writes words of 76 or 77 characters, over RFC 2047's limit of 75;
* a non-ASCII ``Subject`` is encoded by the standard library's RFC 2047 encoder
  (``email.header.Header``, lines of at most 76) and set as written: the policy's folder drops
  the space between two encoded words it puts on different lines (``über año`` arrives as
  ``überaño``). An ASCII subject needs no encoded words and is folded by the policy.

A message whose recipient or sender address is non-ASCII is built with ``email.policy.SMTPUTF8``
instead (RFC 6532: UTF-8 headers, no encoded words at all) and marked ``Outgoing.smtputf8``: only
a server offering SMTPUTF8 may take it (``sending`` records ``failed`` otherwise). An address
whose local part is ASCII travels in ASCII, its domain as IDNA A-labels (``addresses``).

Fixed headers: ``Date`` in UTC with ``+0000`` (not the obsolete ``GMT``), a unique
``Message-ID`` under the From domain, ``Auto-Submitted: auto-generated``, ``Content-Language``,
and with a withdrawal link ``List-Unsubscribe: <URL>`` plus, over https only,
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058). ``List-Unsubscribe`` is set
as written and never refolded (``refold_source="none"``): the SMTP policy would cut a URL longer
than a line into encoded words, which clients do not decode back into a link. It must fit in
998 characters.

Bodies: ``multipart/alternative``, text then HTML, UTF-8 quoted-printable (7-bit clean, so
servers without 8BITMIME take them too).

Speed: building an ``EmailMessage`` costs milliseconds (every header parsed into an object and
folded again on the way out), most of an email sweep's time. An all-ASCII message (the usual
case) is therefore written directly (``_as_written``): the headers that need the policy (From,
Subject, Content-Language, and a To or Message-ID that is not a plain dot-atom on one line) are
folded by it once per distinct value (cached), the bodies by the same quoted-printable
encoder; the bytes are those of the ``EmailMessage`` path apart from the random boundary
(``tests/mail/test_compose_fast.py`` compares them). A message that needs SMTPUTF8 is built
with ``EmailMessage``.

Failure modes: ``compose`` raises ``InvalidInput`` when the recipient is not one valid address
(a value stored before the address rule, see ``addresses``) and ``ValueError`` when a header
cannot be written (a line break in a value, an over-long ``List-Unsubscribe``). Neither names
the address.
"""

from __future__ import annotations

import email.header
import email.policy
import email.quoprimime
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache

from consentflow import addresses
from consentflow.mail.rendering import Rendered
from consentflow.models import utcnow
from consentflow.settings import get_settings

#: Headers folded by the policy at 76 (encoded words within 75); ``set_raw`` values as written.
LINE_LENGTH = 76
POLICY = email.policy.SMTP.clone(max_line_length=LINE_LENGTH, refold_source="none")
#: The same for a message that needs SMTPUTF8 (UTF-8 headers, no encoded words).
POLICY_UTF8 = email.policy.SMTPUTF8.clone(max_line_length=LINE_LENGTH, refold_source="none")
#: RFC 5322 section 2.1.1: a line is at most 998 characters (CRLF excluded).
MAX_LINE = 998


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
    #: The envelope recipient, in its wire form (``addresses.for_sending``).
    recipient: str = field(repr=False)
    data: bytes = field(repr=False)
    #: It has a withdrawal link but no ``List-Unsubscribe-Post``: the link is not https.
    one_click_omitted: bool = False
    #: An address is non-ASCII: the message may only go to a server offering SMTPUTF8.
    smtputf8: bool = False


def _subject(msg: EmailMessage, subject: str, utf8: bool) -> None:
    """``Subject``: folded by the policy, or RFC 2047-encoded whole (see the module docstring)."""
    if "\r" in subject or "\n" in subject:
        raise ValueError("a header value must be a single line")
    if utf8 or subject.isascii():
        msg["Subject"] = subject
        return
    header = email.header.Header(subject, "utf-8", maxlinelen=76, header_name="Subject")
    msg.set_raw("Subject", header.encode(linesep="\r\n"))


def compose(
    rendered: Rendered,
    *,
    to: str,
    message_id: str,
    unsubscribe_url: str | None = None,
    sender: str | None = None,
) -> Outgoing:
    """A multipart/alternative message (text, then HTML) to the stored address ``to``.

    ``unsubscribe_url``: the withdrawal link; adds ``List-Unsubscribe: <URL>`` and, when the URL
    is https, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 one-click, which
    requires https; ``Outgoing.one_click_omitted`` marks a message that had to go without it,
    and ``Mailer`` logs that once). The DKIM signature RFC 8058 also asks for is the sending
    MTA's job.
    """
    name, from_address = parseaddr(sender or get_settings().mail_from)
    wire = addresses.for_sending(to)
    utf8 = wire.smtputf8 or not from_address.isascii()
    if "\r" in rendered.subject or "\n" in rendered.subject:
        raise ValueError("a header value must be a single line")
    one_click_omitted = False
    unsubscribe: str | None = None
    if unsubscribe_url:
        unsubscribe = f"<{unsubscribe_url}>"
        if len("List-Unsubscribe: ") + len(unsubscribe) > MAX_LINE or not (
            unsubscribe.isascii() and unsubscribe.isprintable()
        ):
            raise ValueError("the withdrawal link does not fit on one ASCII header line")
        one_click_omitted = not unsubscribe_url.lower().startswith("https://")
    build = _with_email_message if utf8 else _as_written
    data = build(rendered, name, from_address, wire.address, message_id, unsubscribe, utcnow())
    return Outgoing(
        message_id,
        from_address,
        wire.address,
        data,
        one_click_omitted=one_click_omitted,
        smtputf8=utf8,
    )


def _with_email_message(
    rendered: Rendered,
    name: str,
    from_address: str,
    to: str,
    message_id: str,
    unsubscribe: str | None,
    now: datetime,
) -> bytes:
    """The message built and serialised by the standard library's ``EmailMessage``."""
    utf8 = not (to.isascii() and from_address.isascii())
    msg = EmailMessage(policy=POLICY_UTF8 if utf8 else POLICY)
    msg["From"] = Address(display_name=name, addr_spec=from_address)
    # A string, not an ``Address``: the latter refuses a non-ASCII local part, which RFC 6532
    # allows (the header then only notes a ``NonASCIILocalPartDefect``).
    msg["To"] = to
    _subject(msg, rendered.subject, utf8)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    if unsubscribe:
        msg.set_raw("List-Unsubscribe", unsubscribe)
        if unsubscribe.lower().startswith("<https://"):
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the parts: making the message multipart moves every Content-* header into them.
    msg["Content-Language"] = rendered.locale
    return msg.as_bytes()


# ------------------------------------------------------------------------ the fast path


def _as_written(
    rendered: Rendered,
    name: str,
    from_address: str,
    to: str,
    message_id: str,
    unsubscribe: str | None,
    now: datetime,
) -> bytes:
    """The bytes ``_with_email_message`` writes for an all-ASCII message, written directly.

    Building an ``EmailMessage`` parses every header into an object and folds it again on the
    way out (milliseconds per message, most of an email sweep's time); here the headers that
    need the policy's encoding and folding (From, To, Subject, Message-ID) are written by it,
    once per distinct value (cached), the others as the policy writes them, and the bodies by
    the same quoted-printable encoder. ``tests/mail/test_compose_fast.py`` checks that both
    paths give the same bytes (apart from the random boundary)."""
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
    lines = [
        _header("From", _from_value(name, from_address)),
        _plain("To", to, _ADDR_SPEC) or _header("To", to),
        _subject_line(rendered.subject),
        f"Date: {format_datetime(now)}\r\n".encode(),
        _plain("Message-ID", message_id, _MSG_ID) or _header("Message-ID", message_id),
        b"Auto-Submitted: auto-generated\r\n",
    ]
    if unsubscribe:
        lines.append(f"List-Unsubscribe: {unsubscribe}\r\n".encode())
        if unsubscribe.lower().startswith("<https://"):
            lines.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    lines += [
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode(),
        _header("Content-Language", rendered.locale),
        f"\r\n--{boundary}\r\n".encode(),
        _PART_HEAD.format("plain", "").encode(),
        _quoted_printable(rendered.text),
        f"\r\n--{boundary}\r\n".encode(),
        _PART_HEAD.format("html", "MIME-Version: 1.0\r\n").encode(),
        _quoted_printable(rendered.html),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(lines)


_PART_HEAD = (
    'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
    "{}\r\n"
)


def _quoted_printable(text: str) -> bytes:
    """A body as ``email.contentmanager`` encodes it (UTF-8, quoted-printable at the policy's
    line length), with CRLF line ends as the generator writes them."""
    lines = text.encode("utf-8").splitlines()
    normal = (b"\n".join(lines) + b"\n").decode("latin-1")
    encoded = email.quoprimime.body_encode(normal, LINE_LENGTH)
    return encoded.replace("\n", "\r\n").encode("ascii")


#: A dot-atom address and a Message-ID of one: the policy writes them as they are when the
#: line fits, so they need not go through it (each message has its own, so no cache helps).
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_ADDR_SPEC = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_MSG_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")


def _plain(name: str, value: str, shape: re.Pattern[str]) -> bytes | None:
    """``name: value`` as the policy writes a simple value that fits on the line, else None."""
    line = f"{name}: {value}"
    if len(line) <= LINE_LENGTH and shape.fullmatch(value):
        return f"{line}\r\n".encode("ascii")
    return None


@lru_cache(maxsize=64)
def _from_value(name: str, from_address: str) -> str:
    return str(Address(display_name=name, addr_spec=from_address))


@lru_cache(maxsize=4096)
def _header(name: str, value: str) -> bytes:
    """One header as the policy folds it (cached: the same values recur across a batch)."""
    msg = EmailMessage(policy=POLICY)
    msg[name] = value
    return _only_header(msg)


@lru_cache(maxsize=1024)
def _subject_line(subject: str) -> bytes:
    msg = EmailMessage(policy=POLICY)
    _subject(msg, subject, False)
    return _only_header(msg)


def _only_header(msg: EmailMessage) -> bytes:
    [(name, value)] = msg.raw_items()
    return POLICY.fold_binary(name, value)

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

Failure modes: ``compose`` raises ``InvalidInput`` when the recipient is not one valid address
(a value stored before the address rule, see ``addresses``) and ``ValueError`` when a header
cannot be written (a line break in a value, an over-long ``List-Unsubscribe``). Neither names
the address.
"""

from __future__ import annotations

import email.header
import email.policy
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from consentflow import addresses
from consentflow.mail.rendering import Rendered
from consentflow.models import utcnow
from consentflow.settings import get_settings

#: Headers folded by the policy at 76 (encoded words within 75); ``set_raw`` values as written.
POLICY = email.policy.SMTP.clone(max_line_length=76, refold_source="none")
#: The same for a message that needs SMTPUTF8 (UTF-8 headers, no encoded words).
POLICY_UTF8 = email.policy.SMTPUTF8.clone(max_line_length=76, refold_source="none")
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
    msg = EmailMessage(policy=POLICY_UTF8 if utf8 else POLICY)
    msg["From"] = Address(display_name=name, addr_spec=from_address)
    # A string, not an ``Address``: the latter refuses a non-ASCII local part, which RFC 6532
    # allows (the header then only notes a ``NonASCIILocalPartDefect``).
    msg["To"] = wire.address
    _subject(msg, rendered.subject, utf8)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    one_click_omitted = False
    if unsubscribe_url:
        value = f"<{unsubscribe_url}>"
        if len("List-Unsubscribe: ") + len(value) > MAX_LINE or not (
            value.isascii() and value.isprintable()
        ):
            raise ValueError("the withdrawal link does not fit on one ASCII header line")
        msg.set_raw("List-Unsubscribe", value)
        if unsubscribe_url.lower().startswith("https://"):
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        else:
            one_click_omitted = True
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the parts: making the message multipart moves every Content-* header into them.
    msg["Content-Language"] = rendered.locale
    return Outgoing(
        message_id,
        from_address,
        wire.address,
        msg.as_bytes(),
        one_click_omitted=one_click_omitted,
        smtputf8=utf8,
    )

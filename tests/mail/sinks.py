"""Real SMTP servers on loopback (aiosmtpd) that keep each message's raw bytes, with or without
SMTPUTF8, and the checks every message consentflow sends must pass.

``RawSink(smtputf8=False)`` is a server like many in the wild: it does not offer SMTPUTF8 (and
refuses ``MAIL FROM:... SMTPUTF8``). ``RawSink(smtputf8=True)`` offers it. Both record the
envelope (``Wire.recipients`` as the client sent them) and the bytes of ``DATA`` exactly as
received, so header checks look at the wire, not at a re-serialised message.

``check_wire(raw, utf8=...)`` asserts what RFC 5322/2047/6532 and the issue ask of a message:
it parses with ``email.policy.strict`` (any defect raises), no header has a defect, header lines
are at most 998 octets, encoded words at most 75 characters and never inside an address, the
``Date`` is in ``+0000``; without SMTPUTF8 the message is pure ASCII.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
from dataclasses import dataclass, field
from email.errors import NonASCIILocalPartDefect
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.net import free_port

ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


@dataclass
class Wire:
    sender: str
    recipients: list[str]
    smtputf8: bool
    raw: bytes = field(repr=False)


@dataclass
class _Handler:
    received: list[Wire] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        wire = Wire(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            bool(envelope.smtp_utf8),
            bytes(envelope.original_content or envelope.content),
        )
        with self.lock:
            self.received.append(wire)
        return "250 2.0.0 Message accepted for delivery"


class RawSink:
    def __init__(self, *, smtputf8: bool) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=smtputf8
        )

    def __enter__(self) -> RawSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Wire]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Wire]:
        return [w for w in self.received if address in w.recipients]


def _head(raw: bytes, utf8: bool) -> tuple[str, list[str]]:
    """The message as text, and its header fields unfolded (one string per field)."""
    text = raw.decode("utf-8" if utf8 else "ascii")  # raises on 8-bit data in a 7-bit message
    head = text.split("\r\n\r\n", 1)[0]
    fields: list[str] = []
    for line in head.split("\r\n"):
        assert len(line.encode("utf-8")) <= 998, f"header line over 998 octets: {line[:60]}"
        if line[:1] in (" ", "\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return text, fields


def check_wire(raw: bytes, *, utf8: bool = False) -> EmailMessage:
    """Assert the header rules (see the module docstring); the parsed message."""
    text, fields = _head(raw, utf8)
    for word in ENCODED_WORD.findall("\r\n".join(fields)):
        assert len(word) <= 75, f"encoded word over 75 characters: {word}"
    if utf8:
        assert not ENCODED_WORD.search("\r\n".join(fields)), "encoded word in an SMTPUTF8 message"
    # RFC 6532: an SMTPUTF8 message's headers are UTF-8 text; parse what the server received.
    msg = email.message_from_string(text, policy=email.policy.strict)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            defects = getattr(value, "defects", ())
            if utf8:  # RFC 6532 allows what Python's RFC 5322 parser notes as a defect
                defects = [d for d in defects if not isinstance(d, NonASCIILocalPartDefect)]
            assert not defects, (name, defects)
    for name in ("From", "To"):
        for address in msg[name].addresses:
            assert "=?" not in address.addr_spec, f"encoded word inside the {name} address"
    [to_field] = [f for f in fields if f.lower().startswith("to:")]
    assert "=?" not in to_field
    [date_field] = [f for f in fields if f.lower().startswith("date:")]
    assert date_field.endswith("+0000") and "GMT" not in date_field, date_field
    assert msg["Message-ID"] and msg["Date"].datetime.utcoffset().total_seconds() == 0
    return msg

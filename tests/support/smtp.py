"""A real SMTP server on loopback for tests (aiosmtpd), with scripted replies.

``SmtpSink`` accepts messages and keeps them parsed; ``replies`` scripts what a recipient gets:
``sink.script("bob@example.com", "450 4.2.0 try later")`` makes the next message to bob fail with
450 (then the one after is accepted), at the DATA stage unless ``stage="rcpt"``.

A pytest plugin (registered in ``tests/conftest.py``): the ``smtp_sink`` fixture (a running sink,
with consentflow's settings pointing at it) and ``smtp_down`` (a port where nothing listens).
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from consentflow import settings
from tests.support.net import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return body.get_content()


@dataclass
class Handler:
    received: list[Received] = field(default_factory=list)
    data_replies: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    rcpt_replies: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        with self.lock:
            queue = self.rcpt_replies.get(address.lower())
            if queue:
                return queue.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                queue = self.data_replies.get(rcpt.lower())
                if queue:
                    return queue.popleft()
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 Message accepted for delivery"


class SmtpSink:
    def __init__(self) -> None:
        self.handler = Handler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]

    def script(self, address: str, *replies: str, stage: str = "data") -> None:
        target = self.handler.rcpt_replies if stage == "rcpt" else self.handler.data_replies
        with self.handler.lock:
            target[address.lower()].extend(replies)


def use_smtp(monkeypatch: pytest.MonkeyPatch, port: int, host: str = "127.0.0.1") -> None:
    """Point consentflow's mail settings at ``host:port`` (and re-read the settings)."""
    monkeypatch.setenv("CONSENTFLOW_SMTP_HOST", host)
    monkeypatch.setenv("CONSENTFLOW_SMTP_PORT", str(port))
    monkeypatch.setenv("CONSENTFLOW_SMTP_TIMEOUT", "5")
    monkeypatch.setenv("CONSENTFLOW_MAIL_FROM", "Consent Desk <consent@example.org>")
    monkeypatch.setenv("CONSENTFLOW_PUBLIC_URL", "https://consent.example.org")
    settings.get_settings.cache_clear()


@pytest.fixture
def smtp_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    """A running sink, with consentflow's settings pointing at it."""
    sink = SmtpSink().start()
    use_smtp(monkeypatch, sink.port)
    try:
        yield sink
    finally:
        sink.stop()
        settings.get_settings.cache_clear()


@pytest.fixture
def smtp_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Settings pointing at a loopback port where nothing listens."""
    port = free_port()
    use_smtp(monkeypatch, port)
    yield port
    settings.get_settings.cache_clear()

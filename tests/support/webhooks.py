"""A real webhook receiver on loopback for the delivery tests, and helpers to set up a ledger.

``Receiver`` is a threaded ``http.server`` on 127.0.0.1 with a free port. Each path answers as
told (status, headers, body), may hang until released (to provoke client timeouts), or may call
a hook before answering. Every request is captured with its headers and exact body bytes.

A pytest plugin (registered in ``tests/conftest.py``): ``receiver`` is a fixture every test may
take; ``allow_loopback`` lets webhooks go to 127.0.0.1, and a module whose tests all deliver to
the receiver asks for it once: ``pytestmark = pytest.mark.usefixtures("allow_loopback")``. (It is
not autouse: elsewhere the SSRF guard keeps refusing loopback, as it does in production.)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from consentflow import db, lifecycle, purposes, settings, subjects, systems
from consentflow.lifecycle import Actor
from consentflow.models import State
from tests.support.seeding import import_subjects


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    hook: Callable[[Captured], None] | None = None


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) refuses bursts of connections
    daemon_threads = True


class Receiver:
    def __init__(self) -> None:
        self.routes: dict[str, Behaviour] = {}
        self.requests: list[Captured] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                cap = Captured(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.requests.append(cap)
                    b = receiver.routes.get(self.path, Behaviour())
                if b.hook:
                    b.hook(cap)
                if b.hang:
                    receiver.release.wait(30)
                try:
                    self.send_response(b.status)
                    for k, v in b.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(b.body)))
                    self.end_headers()
                    self.wfile.write(b.body)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, status: int = 200, **kw: Any) -> None:
        with self.lock:
            self.routes[path] = Behaviour(status=status, **kw)

    def at(self, path: str) -> list[Captured]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def ids(self, path: str | None = None) -> Counter[str]:
        with self.lock:
            return Counter(
                r.headers["webhook-id"] for r in self.requests if path is None or r.path == path
            )

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let webhooks go to the loopback receiver (the SSRF guard refuses 127.0.0.1 otherwise)."""
    monkeypatch.setenv("CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running ``Receiver``, closed after the test."""
    r = Receiver()
    yield r
    r.close()


def verify(cap: Captured, secret: str) -> dict[str, Any]:
    """Check one captured request with the public ``standardwebhooks`` package."""
    return Webhook(secret).verify(cap.body, cap.headers)


def ledger(
    engine: Any,
    receiver: Receiver,
    endpoints: dict[str, str],
    *,
    subjects_n: int = 1,
    purpose: str = "news",
) -> dict[str, str]:
    """A purpose, ``subjects_n`` subjects with given consent, systems at ``endpoints``
    (name -> path). Returns name -> webhook secret."""
    out = {}
    with db.session_scope(engine) as s:
        purposes.add(s, purpose, title="News", validity_days=365)
        for name, path in endpoints.items():
            _, secret = systems.add(s, name, [purpose], webhook_url=receiver.url(path))
            assert secret
            out[name] = secret
        for i in range(subjects_n):
            subjects.add(s, f"subject-{i}")
    with db.session_scope(engine) as s:
        for i in range(subjects_n):
            lifecycle.grant(s, f"subject-{i}", purpose, Actor())
    return out


def revoke(engine: Any, n: int = 1, purpose: str = "news", start: int = 0) -> None:
    with db.session_scope(engine) as s:
        for i in range(start, start + n):
            lifecycle.revoke(s, f"subject-{i}", purpose, Actor())


def bulk_withdrawals(engine: Any, receiver: Receiver, path: str, n: int) -> str:
    """``n`` imported withdrawals (with propagation) for one system: ``n`` due deliveries."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        _, secret = systems.add(s, "bulk", ["news"], webhook_url=receiver.url(path))
    withdrawn = ("news", State.WITHDRAWN)
    import_subjects(
        engine, n, prefix="bulk-", email=False, locale=None, consent=withdrawn, propagate=True
    )
    assert secret
    return secret

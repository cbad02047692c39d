"""The demo's local stand-ins for the outside world: an SMTP sink and two webhook endpoints.

Both listen on 127.0.0.1 only, on a free port, in a thread of their own, and keep what they get
in memory for ``consentflow demo`` to show. The sink keeps every message whole (the bytes of its
DATA, as a mail program would store an ``.eml`` file) and ``Sink.save`` writes them out; it
accepts everything. The receiver's ``/hooks/crm`` answers 200 and ``/hooks/ads`` 503 (it is
down). Failure mode: ``ConsentflowError`` if aiosmtpd is missing (it ships with consentflow).
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from consentflow.errors import ConsentflowError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Kept:
    """One message the sink accepted: its headers (decoded) and its bytes as received."""

    headers: dict[str, str]
    raw: bytes = field(repr=False)
    recipients: tuple[str, ...] = field(repr=False)


class Sink:
    """Accepts every message on 127.0.0.1 and keeps it whole (aiosmtpd, in a thread)."""

    def __init__(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:  # pragma: no cover - aiosmtpd ships with consentflow
            raise ConsentflowError(
                "the demo needs aiosmtpd for its local mail sink: pip install aiosmtpd"
            ) from None
        self.kept: list[Kept] = []
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.content)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        kept = Kept({k: str(v) for k, v in msg.items()}, raw, tuple(envelope.rcpt_tos))
        with self.lock:
            self.kept.append(kept)
        return "250 2.0.0 kept by the consentflow demo sink"

    @property
    def messages(self) -> list[dict[str, str]]:
        """The headers of every message kept, in arrival order."""
        with self.lock:
            return [k.headers for k in self.kept]

    def save(self, directory: Path) -> list[Path]:
        """Write every message kept to ``directory`` as ``NNN-<recipient's local part>.eml``
        (CRLF line ends, as received; any mail program opens them); returns the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        with self.lock:
            kept = list(self.kept)
        paths = []
        for number, message in enumerate(kept, 1):
            local = message.recipients[0].partition("@")[0] if message.recipients else "unknown"
            path = directory / f"{number:03d}-{_UNSAFE.sub('_', local)[:40]}.eml"
            path.write_bytes(message.raw)
            paths.append(path)
        return paths

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class Receiver:
    """Two downstream systems' webhook endpoints on 127.0.0.1 (a threaded ``http.server``):
    ``/hooks/crm`` answers 200, ``/hooks/ads`` 503 (it is down). Keeps every request."""

    def __init__(self) -> None:
        self.status = {"/hooks/crm": 200, "/hooks/ads": 503}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append((self.path, headers, body))
                self.send_response(receiver.status.get(self.path, 404))
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == path]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

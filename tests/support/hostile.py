"""A hostile webhook receiver on loopback: it answers each path with exact raw bytes.

``tests.support.webhooks.Receiver`` speaks well-formed HTTP through ``http.server``, which
encodes header values as Latin-1 and computes ``content-length`` itself. A hostile receiver
answers anything: UTF-8 or invalid bytes in headers, NUL bytes, a gzip body (or bomb), a status
line that is not HTTP. ``RawReceiver`` reads one request per connection (request line, headers,
``content-length`` body), captures it, writes the raw answer configured for its path and closes
the connection. It is a plain threaded socket server on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import socketserver
import threading
from collections import Counter

from tests.support.webhooks import Captured

#: An answer with nothing wrong with it, for paths not set.
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def answer(status_line: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    """Raw response bytes: ``status_line``, each header line as given, the body (with a
    ``content-length`` unless one is among ``headers``)."""
    lines = [status_line, *headers]
    if not any(h.lower().startswith(b"content-length:") for h in headers):
        lines.append(b"content-length: " + str(len(body)).encode())
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class RawReceiver:
    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.requests: list[Captured] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request_line = self.rfile.readline(65536).decode("latin-1").split()
                headers: dict[str, str] = {}
                while (line := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = self.rfile.read(int(headers.get("content-length") or 0))
                path = request_line[1] if len(request_line) > 1 else ""
                with receiver.lock:
                    receiver.requests.append(Captured(path, headers, body))
                    raw = receiver.routes.get(path, OK)
                try:
                    self.wfile.write(raw)
                    self.wfile.flush()
                except OSError:
                    pass  # the client gave up

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, raw: bytes) -> None:
        with self.lock:
            self.routes[path] = raw

    def ids(self, path: str | None = None) -> Counter[str]:
        with self.lock:
            return Counter(
                r.headers["webhook-id"] for r in self.requests if path is None or r.path == path
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

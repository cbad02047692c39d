"""Issue 14, defect 8: the API authenticates before it reads a body, and every route caps its body
(``web.middleware.BodyLimits``): on a real uvicorn server, with a raw socket client that streams
the body, so "the server did not read it" is observed, not assumed."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from consentflow.web.middleware import API_LIMIT, PAGE_LIMIT, PURPOSE_LIMIT
from tests.support.web import bearer, seed, served

HUNDRED_MB = 100 * 1024 * 1024
CHUNK = b"x" * 65536


@pytest.fixture
def server(engine, monkeypatch):
    made = seed(engine)
    with served(monkeypatch) as base:
        yield base, made


def _connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setblocking(False)
    return sock


def _stream(base: str, head: str, body_size: int, *, chunked: bool = False) -> tuple[bytes, int]:
    """Send ``head`` then up to ``body_size`` bytes of body (chunked or not), reading whenever
    the server answers; stop sending as soon as it has. Returns (response bytes, body bytes the
    client got to send before the answer came)."""
    sock = _connect(base)
    _send_all(sock, head.encode())
    sent, answer = 0, b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < body_size else [], [], 5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
                continue
            if writable:
                piece = CHUNK[: min(len(CHUNK), body_size - sent)]
                frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                try:
                    n = sock.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    continue  # the server closed its side: read what it answered
                if chunked and n < len(frame):
                    _send_all(sock, frame[n:])
                sent += len(piece) if chunked else n
                if chunked and sent >= body_size:
                    _send_all(sock, b"0\r\n\r\n")
    finally:
        sock.close()
    return answer, sent


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        select.select([], [sock], [], 5)
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


def _post_head(base: str, path: str, length: int | None, token: str | None = None) -> str:
    host = urlsplit(base).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n\r\n"


PATH = "/api/v1/subjects"


@pytest.mark.parametrize("auth", ["none", "unknown", "malformed"])
def test_an_unauthenticated_100_mb_body_gets_401_before_it_is_sent(server, auth):
    base, _ = server
    head = _post_head(base, PATH, HUNDRED_MB)
    if auth == "unknown":
        head = head.replace("\r\n\r\n", "\r\nAuthorization: Bearer cf_nosuchtoken\r\n\r\n")
    elif auth == "malformed":
        head = head.replace("\r\n\r\n", "\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n")
    answer, sent = _stream(base, head, HUNDRED_MB)
    status, body = _status_and_json(answer)
    assert status == 401 and set(body) == {"detail"}
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
    # The answer came while the client was still sending: the server read (almost) nothing.
    assert sent < HUNDRED_MB // 4, f"the client sent {sent} bytes before the 401"


def test_an_unauthenticated_chunked_body_gets_401_before_it_is_sent(server):
    base, _ = server
    answer, sent = _stream(base, _post_head(base, PATH, None), HUNDRED_MB, chunked=True)
    assert _status_and_json(answer)[0] == 401 and sent < HUNDRED_MB // 4


def test_a_declared_oversize_body_gets_413_before_it_is_sent(server):
    base, made = server
    answer, sent = _stream(base, _post_head(base, PATH, HUNDRED_MB, made.admin), HUNDRED_MB)
    status, body = _status_and_json(answer)
    assert status == 413 and set(body) == {"detail"} and "\n" not in str(body["detail"])
    assert str(API_LIMIT) in str(body["detail"])
    assert sent < HUNDRED_MB // 4


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    base, made = server
    answer, sent = _stream(base, _post_head(base, PATH, None, made.admin), HUNDRED_MB, chunked=True)
    status, body = _status_and_json(answer)
    assert status == 413 and set(body) == {"detail"}
    assert sent < HUNDRED_MB // 4


def test_the_limits_are_per_route_and_normal_requests_are_unchanged(server, engine):
    base, made = server
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post(PATH, json={"external_id": "carla"}, headers=bearer(made.admin))
        assert r.status_code == 201, r.text
        # Just under the API limit: read, and answered on its merits (422: no such field).
        padded = {"external_id": "dora", "pad": "x" * (API_LIMIT - 100)}
        r = c.post(PATH, json=padded, headers=bearer(made.admin))
        assert r.status_code == 422, r.text
        r = c.post(PATH, json={"external_id": "x" * API_LIMIT}, headers=bearer(made.admin))
        assert r.status_code == 413 and r.json()["detail"].count("\n") == 0
        # A purpose's notice may be long (50 translations of 10,000 characters): its routes
        # take bodies far larger than the API default.
        texts = {f"fr-x{i}": {"description": "d" * 10_000} for i in range(50)}
        big = {"key": "long", "title": "Long", "validity_days": 30, "texts": texts}
        assert API_LIMIT < len(json.dumps(big)) < PURPOSE_LIMIT
        r = c.post("/api/v1/purposes", json=big, headers=bearer(made.admin))
        assert r.status_code != 413, r.text
        # A page's form is small: a 1 MB form post to a link page is refused unread.
        r = c.post("/l/whatever", content=b"a=" + b"x" * (PAGE_LIMIT + 1))
        assert r.status_code == 413 and r.headers["content-security-policy"]
        # Reads need no body and are untouched; a safe request with a body is still capped.
        assert c.get("/api/v1/health").status_code == 200
        assert c.get(PATH + "/carla", headers=bearer(made.admin)).status_code == 200

"""Security headers on every response: the ``SecurityHeaders`` ASGI middleware."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Headers for every response; pages also get a strict CSP and no caching (link tokens are in
    their URLs, so nothing may leak through a Referer or a shared cache)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = _SECURITY_HEADERS + (
                    [] if scope["path"].startswith("/api/") else _PAGE_HEADERS
                )
                headers.extend((k, v) for k, v in extra if k not in names)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

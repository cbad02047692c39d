"""Security headers on every response: the ``SecurityHeaders`` ASGI middleware.

Every response (API and pages) gets ``X-Content-Type-Options``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options``, a ``Permissions-Policy`` that turns off every powerful browser feature
(camera, microphone, geolocation, payment, ...: no page needs one) and
``Cross-Origin-Opener-Policy: same-origin``; ``Strict-Transport-Security`` is added when
``CONSENTFLOW_PUBLIC_URL`` is https (sending it over plain http would be ignored, and pinning a
development host to https would lock it out). Pages also get a strict Content-Security-Policy
(nothing from third parties; images from the controller's logo origin only when one is
configured) and ``Cache-Control: no-store``. A header the route set itself is kept.

The header values are computed once per app (``SecurityHeaders`` reads the settings when the app
is built), so a request never pays for them.

Bodies: the ``BodyLimits`` ASGI middleware (issue 14, defect 8). FastAPI reads a route's body
before it runs the route's dependencies, authentication included, so without it anyone could
make the server read (and hold) any amount of data before the 401. Here, before the app sees the
request:

- an unsafe API request (``POST``, ``PUT``, ``PATCH``, ``DELETE`` under ``/api/``) that has a body
  is authenticated first, from its headers alone (``auth.authenticate``: a bearer token; a cookie
  never authorises an unsafe API call), and answered 401 without a byte of its body being read;
  the route then checks the token's scope as before;
- every body is capped per route (``limit_for``): ``API_LIMIT`` (64 KiB) for the API,
  ``PURPOSE_LIMIT`` (4 MiB) for ``/api/v1/purposes`` (a notice may carry 50 translations of
  10,000 characters), 4 MiB for ``/api/v1/check/batch`` (10,000 subject ids), ``PAGE_LIMIT``
  (16 KiB) for the pages' forms. A declared
  ``Content-Length`` over the limit is a 413 at once; a body without one (chunked) is counted as
  it streams in and cut off at the limit: the app's answer to the cut-off body is dropped and a
  413 sent instead. Nothing ever reads a whole oversize body.

These answers have the app's usual shape (``errors.error_response``: one-line JSON ``detail``
under /api, a page elsewhere) and say ``Connection: close``, so the server drops the connection
instead of reading the rest of the body. Failure mode: if the database cannot be reached for the
early authentication, the request fails (500) as the route itself would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentflow import db
from consentflow.settings import Settings, get_settings
from consentflow.web import auth
from consentflow.web.errors import error_response

Header = tuple[bytes, bytes]

#: Features no page uses: the browser refuses them to the page and to anything it embeds.
DENIED_FEATURES = (
    "accelerometer",
    "autoplay",
    "camera",
    "display-capture",
    "encrypted-media",
    "fullscreen",
    "geolocation",
    "gyroscope",
    "magnetometer",
    "microphone",
    "midi",
    "payment",
    "picture-in-picture",
    "publickey-credentials-get",
    "screen-wake-lock",
    "usb",
    "xr-spatial-tracking",
)
#: One year, subdomains not included (the operator's other hosts are not ours to pin).
HSTS = b"max-age=31536000"


def common_headers(settings: Settings) -> list[Header]:
    """The headers of every response, API and pages alike."""
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"permissions-policy", ", ".join(f"{f}=()" for f in DENIED_FEATURES).encode()),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if settings.public_url.lower().startswith("https://"):
        headers.append((b"strict-transport-security", HSTS))
    return headers


def page_headers(settings: Settings) -> list[Header]:
    """The extra headers of pages: the CSP (images: this site, data: URLs and the controller's
    logo origin, if any) and no caching (link tokens are in the URLs)."""
    img = "'self' data:"
    logo = settings.controller_logo_url
    if logo and not logo.startswith("/"):
        parts = urlsplit(logo)
        img += f" {parts.scheme}://{parts.netloc}"
    csp = (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src {img}; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return [(b"content-security-policy", csp.encode()), (b"cache-control", b"no-store")]


class SecurityHeaders:
    """Headers for every response; pages also get a strict CSP and no caching (link tokens are in
    their URLs, so nothing may leak through a Referer or a shared cache)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        settings = get_settings()
        self._api = common_headers(settings)
        self._pages = self._api + page_headers(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._api if scope["path"].startswith("/api/") else self._pages

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in extra if k not in names)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: The cap of an API body: every JSON request the API takes fits many times over.
API_LIMIT = 64 * 1024
#: The cap of a purpose's body: 51 texts of 10,200 characters, even \u-escaped (6 bytes each).
PURPOSE_LIMIT = 4 * 1024 * 1024
#: The cap of a page's form post (a link answer, sign-in, asking for a new link).
PAGE_LIMIT = 16 * 1024
#: Path prefixes and their caps, first match wins; anything else: ``PAGE_LIMIT``.
ROUTE_LIMITS: tuple[tuple[str, int], ...] = (
    ("/api/v1/purposes", PURPOSE_LIMIT),
    ("/api/v1/check/batch", 4 * 1024 * 1024),  # 10,000 ids of up to 200 characters: ~2 MB
    ("/api/", API_LIMIT),
)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def limit_for(path: str, limits: Sequence[tuple[str, int]] = ROUTE_LIMITS) -> int:
    """The most bytes a request to ``path`` may send as its body."""
    return next((cap for prefix, cap in limits if path.startswith(prefix)), PAGE_LIMIT)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes its cap."""


def _too_large(limit: int) -> str:
    return f"request body too large: at most {limit} bytes here"


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _refusal(scope: Scope) -> auth.AuthError | None:
    """The 401 an unsafe API request gets from its headers alone, or None if it may go on.
    Blocking (a database lookup): run in a worker thread."""
    try:
        with db.session_scope(readonly=True) as session:
            auth.ANY.admit(auth.authenticate(Request(scope), session, readonly=True))
    except auth.AuthError as exc:
        return exc
    return None


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """The app's usual error answer, closing the connection (the body stays unread)."""
    response = error_response(Request(scope), status, detail)
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class BodyLimits:
    """Authenticate unsafe API requests before their body, and cap every body (see the module
    docstring)."""

    def __init__(self, app: ASGIApp, limits: Sequence[tuple[str, int]] = ROUTE_LIMITS) -> None:
        self.app = app
        self.limits = tuple(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, limit = scope["path"], limit_for(scope["path"], self.limits)
        headers = Headers(scope=scope)
        declared = _declared_length(headers)
        has_body = bool(declared) or "transfer-encoding" in headers
        if has_body and scope["method"] not in _SAFE and path.startswith("/api/"):
            refused = await run_in_threadpool(_refusal, scope)
            if refused is not None:
                await _answer(scope, receive, send, refused.status_code, refused.detail)
                return
        if declared is not None and declared > limit:
            await _answer(scope, receive, send, 413, _too_large(limit))
            return
        await self._capped(scope, receive, send, limit)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app on a ``receive`` that stops at ``limit`` bytes; past it, answer 413."""
        received, too_large, started = 0, False, False

        async def capped_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise BodyTooLarge(_too_large(limit))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to a cut-off body: the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await _answer(scope, receive, send, 413, _too_large(limit))

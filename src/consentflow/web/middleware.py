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
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentflow.settings import Settings, get_settings

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

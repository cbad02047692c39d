"""The public page where a person asks for a new link: ``GET /link/new`` (a form with one email
field) and ``POST /link/new``.

No account enumeration: every well-formed request with a valid form token gets the same page
(same text, same status, no cookie or header that depends on the address), whether the address
belongs to a subject, is unknown, suppressed or over its limit. What happens behind it is
``consentflow.link_requests``: for a known address a ``preference_link`` email is recorded in the
request's transaction and sent after the answer has gone out (a background task), so the time to
answer does not depend on the mail server either; nothing is sent for an unknown address.

Limits: per address, ``CONSENTFLOW_LINK_REQUESTS_PER_ADDRESS`` emails per hour (counted in the
database, across processes); per client IP, ``CONSENTFLOW_LINK_REQUESTS_PER_CLIENT`` requests
per hour, counted in this process only (``ClientLimiter``: a restart or a second process starts
afresh; behind a proxy every request has the proxy's address). A limited request gets the same
page. The form is CSRF-protected like the sign-in form (a token bound to an HttpOnly cookie,
``web.security``); a refused form token is a 403 and changes nothing. The address is never
logged, stored or echoed back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from consentflow import link_requests
from consentflow.settings import get_settings
from consentflow.web import security
from consentflow.web.auth import DbSession
from consentflow.web.templating import render, secure_cookies

router = APIRouter(include_in_schema=False)

PATH = "/link/new"
#: The per-client window.
WINDOW_SECONDS = 3600.0


class ClientLimiter:
    """At most ``limit`` hits per key in a sliding window, in this process (thread-safe). Keeps
    at most ``max_keys`` keys, dropping the least recently seen."""

    def __init__(self, window: float = WINDOW_SECONDS, max_keys: int = 10_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, limit: int, *, now: float | None = None) -> bool:
        """Count a hit for ``key``; whether it is within ``limit`` (a refused hit counts too)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.pop(key, None) or deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            hits.append(now)
            self._hits[key] = hits
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
            return len(hits) <= limit

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()


#: The per-client counter of this process.
clients = ClientLimiter()


def _page(
    request: Request,
    session: Session,
    name: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    """A page of this module, with a form token bound to a fresh or existing CSRF cookie."""
    binding = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf_binding()
    context = {
        "csrf": security.csrf_token(session, binding),
        "hours": 1,
        **context,
    }
    response = render(request, name, context, status_code=status)
    response.set_cookie(
        security.CSRF_COOKIE,
        binding,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(),
        path="/",
    )
    return response


@router.get(PATH, response_class=HTMLResponse)
def new_link_form(request: Request, session: DbSession) -> Response:
    """The form: one email field. Changes nothing (it sets the form's CSRF cookie)."""
    return _page(request, session, "new_link.html", {"problem": None})


@router.post(PATH, response_class=HTMLResponse)
def new_link_request(
    request: Request,
    session: DbSession,
    tasks: BackgroundTasks,
    email: Annotated[str, Form(max_length=320)] = "",
    csrf_token: Annotated[str | None, Form(max_length=1000)] = None,
) -> Response:
    """Record and (after answering) send a preference link if the address is a subject's; the
    same answer whatever happened."""
    if not security.check_csrf(session, request.cookies.get(security.CSRF_COOKIE), csrf_token):
        return _page(request, session, "new_link.html", {"problem": "expired"}, status=403)
    address = link_requests.normalise_address(email)
    if "@" not in address or len(address) < 3:
        return _page(request, session, "new_link.html", {"problem": "address"}, status=422)
    client = request.client.host if request.client else "unknown"
    if clients.allow(client, get_settings().link_requests_per_client):
        pending = link_requests.request_by_email(session, address)
        if pending is not None:
            tasks.add_task(link_requests.send, pending)
    return _page(request, session, "new_link_sent.html", {})

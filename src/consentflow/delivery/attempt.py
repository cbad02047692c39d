"""One webhook attempt over HTTP: the worker's client and ``send`` (step 3 of ``engine``).

The stored body is sent byte for byte with the delivery's fixed ``webhook-id``, a fresh
timestamp and signature (``signing``), the pass's signed audit head in the
``consentflow-audit-anchor`` header when the engine read one (``anchors``), redirects not
followed, a connect timeout of 5 s and a total timeout; ``ssrf.GuardedBackend`` re-checks the
SSRF rules on every connection. ``send`` never raises for anything the network or the receiver
does (any bytes, any header): the answer becomes a ``Result`` with its excerpt made plain,
bounded text (``excerpt``) and ``Retry-After`` read strictly (``schedule``). A cancel before the
answer's status arrived is raised; one after it returns the result marked ``interrupted``, for
the caller to record before it stops. Each attempt is logged (``runlog``): systems and webhook
ids, never a secret or a person.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable
from datetime import datetime

import httpcore
import httpx

from consentflow import anchors
from consentflow.delivery import excerpt as excerpts
from consentflow.delivery import runlog, signing, ssrf
from consentflow.delivery.outbox import Claimed, Result
from consentflow.delivery.schedule import parse_retry_after
from consentflow.errors import InvalidInput
from consentflow.models import utcnow

CONNECT_TIMEOUT = 5.0
USER_AGENT = "consentflow-webhooks/1"


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (~0.25 s here), which a
    client per pass of the propagate loop would pay on every wake-up."""
    return httpx.create_ssl_context()


def make_client(timeout: float, policy: ssrf.Allowed | None = None) -> httpx.AsyncClient:
    """The worker's one long-lived client: no redirects, no proxies from the environment,
    the SSRF guard on every connection."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, verify=_ssl_context())
    # httpx does not expose httpcore's network backend; the pool is rebuilt with the guard.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=None,
        max_keepalive_connections=200,
        keepalive_expiry=30.0,
        network_backend=ssrf.GuardedBackend(policy),
    )
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        headers={"user-agent": USER_AGENT},
    )


async def send(
    client: httpx.AsyncClient,
    c: Claimed,
    *,
    timeout: float,
    clock: Callable[[], datetime],
    policy: ssrf.Allowed | None = None,
    logger: runlog.Logger | None = None,
    anchor: str | None = None,
) -> Result:
    """One attempt: POST the stored body, signed now. Never raises for anything the network or
    the receiver does (any bytes, any header). A cancel before the answer's status arrived is
    raised; one after it returns the result marked ``interrupted``, for the caller to record.

    Each attempt is logged (``logger``, default: the Prefect run's logger inside a run): a
    success at INFO, a failure at WARNING, with the system, webhook id, attempt and outcome.
    ``anchor`` (the compact signed audit head, ``anchors.Anchor.compact``) goes in the
    ``consentflow-audit-anchor`` header, beside the Standard Webhooks headers.
    """
    started = clock()
    t0 = time.perf_counter()
    body = c.payload.encode("utf-8")
    status = None
    error_class = error = excerpt = None
    retry_after = None
    interrupted = False
    try:
        ssrf.check_scheme(c.url, policy)
        if c.secret_error:
            raise InvalidInput(c.secret_error)
        headers = signing.headers(c.secrets, c.webhook_id, body)
        if anchor:
            headers[anchors.HEADER] = anchor
        async with asyncio.timeout(timeout):
            async with client.stream("POST", c.url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"), utcnow())
                excerpt = await excerpts.read(response)
    except asyncio.CancelledError:
        if status is None:
            raise
        interrupted = True  # the receiver has answered: the caller records it, then stops
    except ssrf.SSRFRefused as exc:
        error_class, error = "SSRFRefused", str(exc)
    except InvalidInput as exc:  # a malformed URL or secret: an operator must fix it
        error_class, error = "Misconfigured", str(exc)
    except TimeoutError:
        error_class, error = "Timeout", f"no complete response within {timeout:g} s"
    except httpx.HTTPError as exc:
        error_class, error = type(exc).__name__, str(exc)
    except OSError as exc:
        error_class, error = type(exc).__name__, str(exc)
    except Exception as exc:  # whatever else an answer provokes is an attempt, not a crash
        error_class, error = type(exc).__name__, str(exc)
    if error is not None:
        error = excerpts.clean(error.replace(c.url, "<webhook url>"), 300)
    result = Result(
        claimed=c,
        started_at=started,
        finished_at=clock(),
        latency_ms=round((time.perf_counter() - t0) * 1000),
        status=status,
        error_class=error_class,
        error=error,
        excerpt=excerpt,
        retry_after=retry_after,
        interrupted=interrupted,
    )
    (logger or runlog.logger()).log(
        logging.INFO if result.ok else logging.WARNING,
        "webhook %s to %s, attempt %d: %s in %d ms",
        c.webhook_id,
        c.system,
        c.attempts + 1,
        "ok" if result.ok else result.describe(),
        result.latency_ms,
    )
    return result

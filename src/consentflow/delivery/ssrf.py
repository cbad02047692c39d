"""The SSRF guard at connect time: the HTTP client connects only to permitted addresses.

The rules (which addresses are forbidden, the allow-list, the registration check) live in
``consentflow.webhook_urls``, where ``systems`` can use them at registration without importing
``delivery``; they are re-exported here. ``GuardedBackend`` resolves the host itself when the
client opens a connection and connects only to an address ``permitted`` accepts, so a DNS answer
cannot change between the check and the connect (TLS still verifies the certificate against the
host name).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

import httpcore

from consentflow.webhook_urls import (
    Allowed,
    IPAddress,
    IPNetwork,
    SSRFRefused,
    addresses_of,
    allowed,
    check_registration,
    check_scheme,
    embedded_ipv4,
    forbidden_reason,
    literal,
    permitted,
    resolve,
)

__all__ = [
    "Allowed",
    "GuardedBackend",
    "IPAddress",
    "IPNetwork",
    "SSRFRefused",
    "allowed",
    "check_registration",
    "check_scheme",
    "embedded_ipv4",
    "forbidden_reason",
    "permitted",
    "resolve",
]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the SSRF check at connect time.

    The host name is resolved here, each address is checked, and the connection goes to a
    permitted address, so a DNS answer cannot change between the check and the connect.
    """

    def __init__(self, policy: Allowed | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        policy = self._policy or allowed()
        ip = literal(host)
        if ip is not None:
            addresses: list[IPAddress] = [ip]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
                )
            except (socket.gaierror, UnicodeError) as exc:
                raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from None
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
            addresses = addresses_of(infos)
        last: Exception | None = None
        for address in permitted(host, addresses, policy):
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host}: no address to connect to")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise SSRFRefused("webhooks are never sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

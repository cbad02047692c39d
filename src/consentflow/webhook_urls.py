"""Where a webhook may go: the SSRF rules, applied at registration and again at every connect.

A webhook URL is refused when its host is, or resolves to, an address that is not publicly
routable: loopback, private (RFC 1918), link-local (cloud metadata at 169.254.169.254), CGNAT
(100.64.0.0/10), multicast, reserved, unspecified, IPv6 unique-local and link-local, and IPv4
addresses smuggled inside IPv6: IPv4-mapped (``::ffff:10.0.0.1``), 6to4 (``2002::/16``, e.g.
``2002:a00:1::`` for 10.0.0.1) and NAT64 (``64:ff9b::/96``, e.g. ``64:ff9b::a9fe:a9fe`` for
169.254.169.254) are judged by the IPv4 address they carry, so a DNS64 network still reaches
public hosts; the local-use NAT64 prefix ``64:ff9b:1::/48`` is refused. ``https`` is required.
Both rules yield to ``CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS``: comma-separated host names, addresses
or networks (e.g. ``127.0.0.1`` for tests and local development, ``10.20.0.0/16,hooks.internal``
for an internal receiver); those may also use plain ``http``.

DNS can change between registration and delivery (and between one delivery and the next), so the
check is made where it counts: ``delivery.ssrf.GuardedBackend`` resolves the name itself when
the HTTP client opens a connection and connects only to a permitted address (refusing when there
is none); TLS still verifies the certificate against the host name. A name that does not
resolve yet is accepted at registration and checked when it is used.

This module holds the rules (a ledger-level module: ``systems`` checks a URL at registration);
the connect-time guard lives in ``consentflow.delivery.ssrf``, which re-exports these names.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from consentflow.errors import InvalidInput
from consentflow.settings import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_6TO4 = ipaddress.ip_network("2002::/16")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local use


class SSRFRefused(InvalidInput):
    """The URL points (or now resolves) somewhere webhooks must not go."""


@dataclass(frozen=True)
class Allowed:
    """The parsed allow-list: host names (lower case) and networks."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, raw: str) -> Allowed:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (x.strip() for x in raw.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        if host in self.hosts:
            return True
        ip = literal(host)
        return ip is not None and self.address_allowed(ip)

    def address_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def allowed() -> Allowed:
    return Allowed.parse(get_settings().webhook_allowed_hosts)


def literal(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and how: IPv4-mapped, 6to4 or NAT64."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _6TO4 and ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why webhooks may not go to ``ip`` (None: a public address).

    An IPv6 address carrying an IPv4 address (IPv4-mapped, 6to4, NAT64) is judged by that IPv4
    address: ``2002:a00:1::`` reaches 10.0.0.1 through a 6to4 relay, ``64:ff9b::7f00:1`` reaches
    127.0.0.1 through a NAT64 gateway.
    """
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        how, inner = embedded
        reason = forbidden_reason(inner)
        if reason is None or how == "IPv4-mapped":
            return reason
        return f"{reason} IPv4 {inner} inside a {how}"
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (CGNAT)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _ULA, "unique-local"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL, "local-use NAT64"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "non-public"),
    )
    return next((label for hit, label in checks if hit), None)


def permitted(host: str, addresses: Iterable[IPAddress], policy: Allowed) -> list[IPAddress]:
    """The addresses of ``host`` that webhooks may go to; raises if there are none.

    Only these are ever connected to, so a name that resolves to both a public and a private
    address can only reach the public one.
    """
    addresses = list(addresses)
    if policy.host_allowed(host):
        return addresses
    ok, refused = [], []
    for ip in addresses:
        reason = forbidden_reason(ip)
        if reason and not policy.address_allowed(ip):
            refused.append((ip, reason))
        else:
            ok.append(ip)
    if not ok and refused:
        ip, reason = refused[0]
        raise SSRFRefused(
            f"webhook host {host} resolves to a {reason} address ({ip}); add it to "
            "CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS if that is intended"
        )
    return ok


def _split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed URL; ``InvalidInput`` (one line) for any other."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed '[' of an IPv6 address, say
        raise InvalidInput(f"bad webhook URL {url[:100]!r}: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"bad webhook URL {url[:100]!r}: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"bad webhook URL {url!r}: expected https://host/path")
    if parts.username or parts.password:
        raise InvalidInput("bad webhook URL: credentials in the URL are not accepted")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_scheme(url: str, policy: Allowed | None = None) -> tuple[str, int]:
    """Shape and scheme: ``https`` unless the host is allowed. Returns (host, port)."""
    policy = policy or allowed()
    scheme, host, port = _split(url)
    if scheme != "https" and not policy.host_allowed(host):
        raise SSRFRefused(
            f"webhook URL must use https (plain http only for CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS): "
            f"{scheme}://{host}"
        )
    return host, port


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (raises ``socket.gaierror`` if none)."""
    ip = literal(host)
    if ip is not None:
        return [ip]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return addresses_of(infos)


def addresses_of(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    """The distinct addresses of ``getaddrinfo`` results, in order (scope ids dropped)."""
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def check_registration(url: str) -> str:
    """The check at registration: refuse at once what is clearly forbidden.

    A name that does not resolve (yet) is accepted: it is checked again at every send.
    """
    policy = allowed()
    host, port = check_scheme(url, policy)
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError):
        return url
    permitted(host, addresses, policy)
    return url

"""Signing, the retry schedule and the SSRF guard as plain functions (no database)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import random
import socket
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from consentflow import settings
from consentflow.delivery import excerpt, schedule, signing, ssrf
from consentflow.delivery.outbox import (
    DEAD,
    DELIVERED,
    HELD,
    RETRIED,
    SUPERSEDED,
    Claimed,
    Result,
)
from consentflow.delivery.report import Report
from consentflow.errors import InvalidInput

# The published Standard Webhooks test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_published_vector_reproduces():
    assert signing.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG
    # the prefix is optional, as in the reference implementation
    assert signing.sign(VECTOR_SECRET[6:], VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_headers_verify_with_the_public_package():
    body = b'{"type":"consent.withdrawn","data":{"x":"\xc3\xa9"}}'
    h = signing.headers([VECTOR_SECRET], "msg_1", body)
    assert Webhook(VECTOR_SECRET).verify(body, h)["type"] == "consent.withdrawn"


def test_rotation_header_carries_new_then_old():
    new, old = "whsec_" + "A" * 43 + "=", VECTOR_SECRET
    h = signing.headers([new, old], VECTOR_ID, VECTOR_BODY, timestamp=VECTOR_TS)
    first, second = h["webhook-signature"].split(" ")
    assert first == signing.sign(new, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert second == VECTOR_SIG


def test_bad_secret_is_a_clear_error():
    with pytest.raises(InvalidInput, match="whsec_"):
        signing.sign("whsec_***", "msg", 1, b"{}")


def test_schedule_default_is_the_standard_webhooks_example():
    assert schedule.DEFAULT_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert sum(schedule.DEFAULT_SCHEDULE) / 3600 == pytest.approx(75.0, abs=1)


def test_schedule_jitter_slow_down_retry_after_and_exhaustion():
    rng = random.Random(1)
    for attempts in range(1, schedule.MAX_ATTEMPTS):
        base = schedule.DEFAULT_SCHEDULE[attempts]
        d = schedule.next_delay(attempts, rng=rng).total_seconds()
        assert 0.8 * base <= d <= 1.2 * base
        slow = schedule.next_delay(attempts, slow_down=True, rng=rng).total_seconds()
        assert slow >= 0.8 * max(min(2 * base, 86400), 60)
    assert schedule.next_delay(schedule.MAX_ATTEMPTS) is None
    ra = schedule.next_delay(1, retry_after=timedelta(minutes=10), rng=rng)
    assert ra == timedelta(minutes=10)
    # an absurd Retry-After is capped at a day
    assert schedule.next_delay(1, retry_after=timedelta(days=30)) == timedelta(days=1)


def test_retry_after_parsing():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule.parse_retry_after("120", now) == timedelta(seconds=120)
    assert schedule.parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == timedelta(minutes=2)
    assert schedule.parse_retry_after("soon", now) is None
    assert schedule.parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "0.0.0.0",
        "::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "64:ff9b:1::808:808",  # local-use NAT64: whatever it carries
    ],
)
def test_forbidden_addresses(address):
    assert ssrf.forbidden_reason(ipaddress.ip_address(address)) is not None
    with pytest.raises(ssrf.SSRFRefused, match="CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS"):
        ssrf.permitted("h", [ipaddress.ip_address(address)], ssrf.Allowed.parse(""))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses(address):
    assert ssrf.forbidden_reason(ipaddress.ip_address(address)) is None


# IPv4 addresses that webhooks may not reach, and what each is.
FORBIDDEN_V4 = {
    "127.0.0.1": "loopback",
    "10.0.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "100.64.0.1": "CGNAT",
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
}


def six_to_four(v4: str) -> ipaddress.IPv6Address:
    """The 6to4 address (2002:V4HI:V4LO::1) that carries ``v4``."""
    return ipaddress.IPv6Address((0x2002 << 112) | (int(ipaddress.IPv4Address(v4)) << 80) | 1)


def nat64(v4: str) -> ipaddress.IPv6Address:
    """The NAT64 well-known-prefix address (64:ff9b::V4) that carries ``v4``."""
    return ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("64:ff9b::")) | int(ipaddress.IPv4Address(v4))
    )


EMBEDDINGS = {"6to4": six_to_four, "NAT64": nat64}


@pytest.mark.parametrize("how", list(EMBEDDINGS))
@pytest.mark.parametrize("v4", list(FORBIDDEN_V4))
def test_6to4_and_nat64_carrying_a_forbidden_ipv4_are_refused(how, v4):
    ip = EMBEDDINGS[how](v4)
    assert ssrf.embedded_ipv4(ip) == (how, ipaddress.IPv4Address(v4))
    reason = ssrf.forbidden_reason(ip)
    assert reason is not None and FORBIDDEN_V4[v4] in reason and v4 in reason
    with pytest.raises(ssrf.SSRFRefused, match=FORBIDDEN_V4[v4]):
        ssrf.permitted("h.example", [ip], ssrf.Allowed.parse(""))


def test_6to4_and_nat64_carrying_a_public_ipv4_are_public():
    # a DNS64 network answers 64:ff9b::808:808 for a public IPv4-only host: it must work
    assert str(six_to_four("8.8.8.8")) == "2002:808:808::1"
    assert str(nat64("8.8.8.8")) == "64:ff9b::808:808"
    for ip in (six_to_four("8.8.8.8"), nat64("93.184.216.34")):
        assert ssrf.forbidden_reason(ip) is None


def test_6to4_and_nat64_literals_refused_at_registration_and_connect(allow):
    allow("")
    for url, match in [
        ("https://[2002:a9fe:a9fe::]/latest/meta-data", "link-local"),
        ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data", "link-local"),
        ("https://[2002:a00:1::1]/x", "private"),
        ("https://[64:ff9b::7f00:1]:8443/x", "loopback"),
    ]:
        with pytest.raises(ssrf.SSRFRefused, match=match):
            ssrf.check_registration(url)
    for host in ("2002:7f00:1::1", "64:ff9b::7f00:1"):
        with pytest.raises(ssrf.SSRFRefused, match="loopback"):
            asyncio.run(ssrf.GuardedBackend().connect_tcp(host, 9, timeout=2))


def test_allow_list_hosts_and_networks():
    policy = ssrf.Allowed.parse(" 127.0.0.1, 10.20.0.0/16 ,hooks.internal,[::1]")
    assert policy.host_allowed("127.0.0.1")
    assert policy.host_allowed("HOOKS.internal.")
    assert policy.host_allowed("[::1]")
    assert policy.host_allowed("10.20.3.4")
    assert not policy.host_allowed("10.21.0.1")
    ip = ipaddress.ip_address("10.20.9.9")
    assert ssrf.permitted("svc.example", [ip], policy) == [ip]
    # a name with a public and a private address may only reach the public one
    public = ipaddress.ip_address("8.8.8.8")
    mixed = [ipaddress.ip_address("10.0.0.1"), public]
    assert ssrf.permitted("mixed.example", mixed, ssrf.Allowed.parse("")) == [public]


@pytest.fixture
def allow(monkeypatch):
    def set_(value: str) -> None:
        monkeypatch.setenv("CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS", value)
        settings.get_settings.cache_clear()

    yield set_
    settings.get_settings.cache_clear()


def test_registration_rules(allow):
    allow("")
    for url, match in [
        ("https://10.0.0.1/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://100.64.0.9/x", "CGNAT"),
        ("https://localhost/x", "loopback"),
        ("http://hooks.example.com/x", "https"),
    ]:
        with pytest.raises(ssrf.SSRFRefused, match=match):
            ssrf.check_registration(url)
    with pytest.raises(InvalidInput, match="credentials"):
        ssrf.check_registration("https://user:pw@hooks.example.com/x")
    # a name that does not resolve yet is accepted (checked again at every send)
    assert ssrf.check_registration("https://not-yet.invalid/hook")
    assert ssrf.check_registration("https://8.8.8.8/hook")
    allow("127.0.0.1")
    assert ssrf.check_registration("http://127.0.0.1:9999/hook")


def test_connect_time_guard_refuses_and_allows(allow):
    allow("")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        with pytest.raises(ssrf.SSRFRefused):
            asyncio.run(ssrf.GuardedBackend().connect_tcp("localhost", port, timeout=2))
        with pytest.raises(ssrf.SSRFRefused):
            asyncio.run(ssrf.GuardedBackend().connect_tcp("127.0.0.1", port, timeout=2))

        async def ok() -> None:
            stream = await ssrf.GuardedBackend(ssrf.Allowed.parse("127.0.0.0/8")).connect_tcp(
                "127.0.0.1", port, timeout=2
            )
            await stream.aclose()

        asyncio.run(ok())
    finally:
        server.close()


# ------------------------------------------------------- hostile answers: Retry-After, excerpts


@pytest.mark.parametrize(
    "value, expected",
    [
        ("99999999999999999999", schedule.MAX_DELAY),  # was OverflowError
        ("0000000000000000000000120", timedelta(seconds=120)),
        ("9" * 5000, schedule.MAX_DELAY),  # longer than int() accepts
        ("²", None),  # a digit to str.isdigit, not to RFC 9110 (was ValueError)
        ("١٢٠", None),  # Arabic-Indic digits
        ("-5", None),
        ("1.5", None),
        ("12 0", None),
        ("", None),
        ("\x00", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", schedule.MAX_DELAY),
        ("Thu, 01 Jan 2026 00:02:00 GMT", timedelta(minutes=2)),
        ("Thursday, 01-Jan-26 00:02:00 GMT", timedelta(minutes=2)),  # RFC 850
        ("Thu Jan  1 00:02:00 2026", timedelta(minutes=2)),  # asctime
        ("Thu, 01 Jan 2025 00:00:00 GMT", timedelta(0)),  # in the past: at once
        ("Thu, 31 Feb 2026 00:00:00 GMT", None),
        ("Thu, 01 Jan 2026 25:00:00 GMT", None),
        ("Thu, 01 Jan 2026 00:02:00 +0100", None),  # HTTP dates are GMT
        ("01 Jan 2026 00:02:00", None),
    ],
)
def test_retry_after_from_a_hostile_receiver(value, expected):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule.parse_retry_after(value, now) == expected


def test_rfc850_two_digit_years_are_never_more_than_50_years_ahead():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    # 99 would be 2099 (73 years ahead): it is 1999, in the past
    assert schedule.parse_retry_after("Friday, 31-Dec-99 23:59:59 GMT", now) == timedelta(0)
    assert schedule.parse_retry_after("Friday, 01-Jan-27 00:00:00 GMT", now) == schedule.MAX_DELAY


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize(
    "raw, encoding, expected",
    [
        (b"thanks", None, "thanks"),
        (b"", None, None),
        (b"a\x00b\x01c\x7fd", None, "a b c d"),
        (b"\xff\xfe\x00o\x00k", None, "\ufffd\ufffd o k"),
        ("line\r\n\tnext\u2028end ".encode(), None, "line next end"),
        ("bidi\u202eevil\u200b".encode(), None, "bidi evil"),
        (_gzip(b"accepted, thanks"), "gzip", "accepted, thanks"),
        (_gzip(b"accepted")[:12], "gzip", "a"),  # truncated: what inflates
        (zlib.compress(b"deflated"), "deflate", "deflated"),
        (b"\x1f\x8b not gzip at all", "gzip", "(gzip-encoded body, unreadable)"),
        (b"\x00\x01\x02", "br", "(br-encoded body, not decoded)"),
        (b"x", "\x00evil\r\nheader" + "a" * 100, "(encoded body, not decoded)"),
    ],
)
def test_excerpt_of_any_bytes_is_plain_short_text(raw, encoding, expected):
    assert excerpt.of(raw, encoding) == expected


def test_excerpt_is_capped_and_a_gzip_bomb_is_never_inflated_whole():
    assert excerpt.of(b"x" * 10_000, None) == "x" * excerpt.EXCERPT_CHARS
    bomb = _gzip(b"\x00" * 50_000_000 + b"tail")  # about 50 KB on the wire
    tracemalloc.start()
    try:
        text = excerpt.of(bomb[: excerpt.EXCERPT_BYTES], "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert text is None  # nothing but NULs within the bound
    assert peak < 1_000_000


def _result(system: str, status: int | None, attempts: int = 0) -> Result:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    c = Claimed(1, 1, system, "https://x.example/h", "msg_1", "{}", attempts, now, ())
    return Result(c, now, now, 5, status=status, error_class=None if status else "Timeout")


def test_report_says_what_failed_in_this_run():
    report = Report()
    assert report.attempted() == 0 and report.failing_systems() == []
    report.note(_result("crm", 200), DELIVERED)
    report.note(_result("crm", 500), RETRIED)
    report.note(_result("ads", 500, attempts=9), DEAD)
    report.note(_result("ads", None), RETRIED)
    report.note(_result("erp", 503), SUPERSEDED)  # another worker's lease: still an attempt
    report.add("crm", HELD, 3)  # held rows are not attempts
    assert report.attempted() == 5 and report.attempted("ads") == 2
    assert report.dead_lettered() == {"ads": 1}
    assert report.failing_systems() == ["ads", "erp"]  # crm had a success
    assert [d["system"] for d in report.dead] == ["ads"]
    assert report.by_system()["crm"] == {DELIVERED: 1, HELD: 3, RETRIED: 1}


def test_reports_of_several_passes_add_up():
    first, second = Report(), Report()
    first.note(_result("crm", 500), RETRIED)
    second.note(_result("crm", 200), DELIVERED)
    second.note(_result("ads", 500, attempts=9), DEAD)
    first.extend(second)
    assert first.attempted() == 3 and first.failing_systems() == ["ads"]
    assert first.dead_lettered() == {"ads": 1} and len(first.dead) == 1

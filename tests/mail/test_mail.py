"""Rendering, MIME structure and SMTP sending over a real server on loopback (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import threading

import pytest
from aiosmtpd.controller import Controller

from consentflow import mail, settings
from consentflow.mail import Mailer, SendStatus, SmtpConfig
from tests.support.net import free_port
from tests.support.smtp import SmtpSink

CONTEXT = {
    "purpose_title": "News & <offers>",
    "valid_until": "2030-01-31",
    "days_left": 7,
    "renew_url": "https://consent.example.org/l/renew?a=1&b=2",
    "revoke_url": "https://consent.example.org/l/revoke",
    "preferences_url": "https://consent.example.org/l/prefs",
}


def _config(port: int, **kw: object) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]


def _message(to: str, n: int = 0, unsubscribe: str | None = None) -> mail.Outgoing:
    rendered = mail.render(mail.Kind.RENEWAL_REMINDER, "en", CONTEXT)
    return mail.compose(
        rendered,
        to=to,
        message_id=mail.new_message_id("x@example.org"),
        unsubscribe_url=unsubscribe,
        sender="Consent Desk <consent@example.org>",
    )


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en", "en"),
        ("fr", "fr"),
        ("fr-CA", "fr"),
        ("FR_ca", "fr"),
        ("de", "de"),  # German and Spanish are complete now (issue 9): no longer English
        ("es-MX", "es"),
        ("pt", "en"),
        ("not a tag!", "en"),
        (None, "en"),
    ],
)
def test_locale_falls_back_to_english(locale: str | None, expected: str) -> None:
    for kind in mail.Kind:
        context = {
            **CONTEXT,
            "requested_on": "2030-01-01",
            "grant_url": "https://g",
            "deadline": "2030-02-01",
            "last": False,
            "expires_on": "2030-01-08",
            # The controller's identity: the preference-link email names it in its subject.
            "controller": settings.get_settings().controller,
        }
        assert mail.render(kind, locale, context).locale == expected


def test_html_is_escaped_and_text_is_not() -> None:
    r = mail.render(mail.Kind.RENEWAL_REMINDER, "en", CONTEXT)
    assert "News &amp; &lt;offers&gt;" in r.html and "<offers>" not in r.html
    assert 'href="https://consent.example.org/l/renew?a=1&amp;b=2"' in r.html
    assert "News & <offers>" in r.text
    assert "https://consent.example.org/l/renew?a=1&b=2" in r.text
    assert r.subject == 'Your consent for "News & <offers>" ends on 2030-01-31'
    with pytest.raises(Exception, match="undefined"):
        mail.render(mail.Kind.RENEWAL_REMINDER, "en", {"purpose_title": "x"})


def test_message_structure_and_one_click_headers() -> None:
    url = "https://consent.example.org/l/" + "t" * 150 + ".sig"
    out = _message("ann@example.com", unsubscribe=url)
    parsed = email.message_from_bytes(out.data, policy=email.policy.default)
    assert parsed["List-Unsubscribe"] == f"<{url}>"  # not folded into encoded words
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Message-ID"] == out.message_id and out.message_id.endswith("@example.org>")
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert "renew it here" in plain.get_content() and "<a href=" in html.get_content()
    assert all(len(line) <= 998 for line in out.data.split(b"\r\n"))
    assert "ann@example.com" not in repr(out)
    assert "List-Unsubscribe" not in email.message_from_bytes(_message("b@example.com").data)


def test_one_click_only_over_https(smtp_sink: SmtpSink, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """RFC 8058 one-click needs https: over plain http the POST header is left out (the
    List-Unsubscribe link stays), and each mailer (one per flow run) says so once."""
    https_out = _message("a@example.com", unsubscribe="https://consent.example.org/l/t1")
    assert not https_out.one_click_omitted
    http_url = "http://127.0.0.1:8000/l/t2"
    http_out = _message("b@example.com", unsubscribe=http_url)
    parsed = email.message_from_bytes(http_out.data, policy=email.policy.default)
    assert parsed["List-Unsubscribe"] == f"<{http_url}>"
    assert parsed["List-Unsubscribe-Post"] is None and http_out.one_click_omitted
    assert not _message("c@example.com").one_click_omitted  # no link, nothing left out

    monkeypatch.setenv("CONSENTFLOW_PUBLIC_URL", "http://127.0.0.1:8000")
    settings.get_settings.cache_clear()
    caplog.set_level(logging.WARNING, logger="consentflow.mail")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "consentflow.mail"]

    with Mailer(_config(smtp_sink.port)) as mailer:
        mailer.send([https_out])
        assert warnings() == []
        mailer.send([_message(f"h{i}@example.com", unsubscribe=http_url) for i in range(3)])
        mailer.send([_message("h9@example.com", unsubscribe=http_url)])
    [warning] = warnings()
    assert "http://127.0.0.1:8000" in warning and "RFC 8058" in warning
    assert "/l/" not in warning and "@example.com" not in warning  # no token, no address
    with Mailer(_config(smtp_sink.port)) as mailer:  # the next run says it again
        mailer.send([http_out])
    assert len(warnings()) == 2
    got = {r.recipients[0]: r.message for r in smtp_sink.received}
    assert got["a@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["b@example.com"]["List-Unsubscribe-Post"] is None
    assert got["b@example.com"]["List-Unsubscribe"] == f"<{http_url}>"


def test_message_ids_are_unique() -> None:
    ids = {mail.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_pool_reuses_connections_across_batches(smtp_sink: SmtpSink) -> None:
    with Mailer(_config(smtp_sink.port, pool_size=2)) as mailer:
        first = mailer.send([_message(f"r{i}@example.com") for i in range(30)])
        second = mailer.send([_message(f"s{i}@example.com") for i in range(30)])
        assert mailer.connections_opened == 2
    assert {r.status for r in first.results + second.results} == {SendStatus.SENT}
    assert first.unavailable is None and len(smtp_sink.received) == 60


def test_replies_are_classified(smtp_sink: SmtpSink) -> None:
    smtp_sink.script("later@example.com", "450 4.2.1 mailbox busy")
    smtp_sink.script("gone@example.com", "550 5.1.1 <gone@example.com> no such user")
    smtp_sink.script("nobody@example.com", "550 5.1.1 unknown recipient", stage="rcpt")
    smtp_sink.script("full@example.com", "452 4.2.2 over quota", stage="rcpt")
    to = ["ok@example.com", "later@example.com", "gone@example.com", "nobody@example.com"]
    to.append("full@example.com")
    with Mailer(_config(smtp_sink.port, pool_size=1)) as mailer:
        report = mailer.send([_message(a) for a in to])
        assert mailer.connections_opened == 1  # errors do not cost the connection
    statuses = [r.status for r in report.results]
    assert statuses == [
        SendStatus.SENT,
        SendStatus.DEFERRED,
        SendStatus.BOUNCED,
        SendStatus.BOUNCED,
        SendStatus.DEFERRED,
    ]
    assert [r.code for r in report.results] == [250, 450, 550, 550, 452]
    assert report.results[2].error == "550 5.1.1 <<address>> no such user"
    assert [r.recipients for r in smtp_sink.received] == [["ok@example.com"]]


def test_server_down_sends_nothing(smtp_down: int) -> None:
    with Mailer(_config(smtp_down, timeout=2)) as mailer:
        report = mailer.send([_message(f"r{i}@example.com") for i in range(3)])
    assert report.unavailable and "cannot connect" in report.unavailable
    assert {r.status for r in report.results} == {SendStatus.DEFERRED}


class _Stalling:
    """A server that accepts the envelope and never answers DATA (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        return "250 OK"


def test_timeout_defers_and_drops_the_connection() -> None:
    handler = _Stalling()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with Mailer(_config(port, timeout=0.5, pool_size=1)) as mailer:
            report = mailer.send([_message("slow@example.com")])
        assert report.results[0].status is SendStatus.DEFERRED
        assert "Timeout" in (report.results[0].error or "")
        assert report.unavailable is None
    finally:
        handler.release.set()
        controller.stop()


def test_send_alert(smtp_sink: SmtpSink) -> None:
    message_id = mail.send_alert("ops@example.org", "2 deliveries dead", "crm: <delivery 7>")
    [got] = smtp_sink.received
    assert got.recipients == ["ops@example.org"] and got.message["Message-ID"] == message_id
    assert "crm: <delivery 7>" in got.part("plain")
    assert "&lt;delivery 7&gt;" in got.part("html")


def test_send_alert_raises_when_unavailable(smtp_down: int) -> None:
    with pytest.raises(mail.MailUnavailable):
        mail.send_alert("ops@example.org", "subject", "text")


def test_address_hash_ignores_case() -> None:
    assert mail.address_hash(b"k", "Ann@Example.COM ") == mail.address_hash(b"k", "ann@example.com")
    assert mail.address_hash(b"k", "ann@example.com") != mail.address_hash(b"j", "ann@example.com")

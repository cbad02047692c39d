"""The pages in a real browser: headless Chromium (Debian's) driven by Playwright for Python.

A consent email is rendered by ``consentflow.mail``, sent over SMTP to a real SMTP server on
loopback (aiosmtpd) and parsed back; the person follows the withdrawal link from it and confirms
(two clicks), then a compliance officer signs in and sees the withdrawal on the dashboard, with
the webhook to the downstream system pending. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlmodel import col, select

from consentflow import db, lifecycle, links
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import ConsentEvent, Purpose, Subject, utcnow
from tests.support.browser import chromium, needs_chromium
from tests.support.net import free_port
from tests.support.web import seed, served

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = needs_chromium


class Sink:
    """A real SMTP server on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append(
                email.message_from_bytes(envelope.content, policy=email.policy.default)
            )
        return "250 OK"


@pytest.fixture
def smtp():
    sink = Sink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def site(engine, monkeypatch):
    """A served app whose public URL (the base of email links) is the server itself."""
    with served(monkeypatch) as base:
        tokens = seed(engine)
        with db.session_scope(engine) as s:
            lifecycle.grant(s, "alice", "news", Actor())
        yield base, tokens


def _send_reminder(engine, smtp: Sink) -> email.message.EmailMessage:
    """Render and send a renewal reminder for alice/news, as the flows do; return it received."""
    import aiosmtplib

    from consentflow import mail

    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == "alice")).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == "news")).one()
        urls = {
            f"{a.value}_url": links.url(links.issue(s, a, sid, None if a == "preferences" else pid))
            for a in (LinkAction.RENEW, LinkAction.REVOKE, LinkAction.PREFERENCES)
        }
    rendered = mail.render(
        mail.Kind.RENEWAL_REMINDER,
        "en",
        {
            "purpose_title": "Monthly newsletter",
            "valid_until": (utcnow() + timedelta(days=14)).strftime("%d %B %Y"),
            "days_left": 14,
            **urls,
        },
    )
    sender = "consent@example.com"
    outgoing = mail.compose(
        rendered,
        to="alice@example.com",
        message_id=make_msgid(domain="example.com"),
        unsubscribe_url=urls["revoke_url"],
        sender=sender,
    )
    send = aiosmtplib.send(
        outgoing.data,
        sender=sender,
        recipients=["alice@example.com"],
        hostname="127.0.0.1",
        port=smtp.port,
    )
    # Playwright's sync API owns this thread's event loop: send from a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send).result(timeout=30)
    (received,) = smtp.messages
    return received


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_withdraw_from_an_email_in_two_clicks_then_see_it_on_the_dashboard(
    engine, smtp, site, browser
):
    base, tokens = site
    message = _send_reminder(engine, smtp)
    text = message.get_body(preferencelist=("plain",)).get_content()
    found = re.findall(rf"{re.escape(base)}/l/[A-Za-z0-9_\-.]+", text)
    assert len(found) == 3  # renew, revoke, preferences
    revoke_url = re.search(r"To withdraw it now instead:\s+(\S+)", text).group(1)
    assert message["List-Unsubscribe"] == f"<{revoke_url}>"

    page = browser.new_page()
    try:
        # Click 1: the link in the email. The page asks; nothing has changed yet.
        page.goto(revoke_url)
        assert page.locator("h1").inner_text() == "Withdraw your consent?"
        _shot(page, "01-withdraw-confirm")
        with db.session_scope(engine) as s:
            assert lifecycle.current(s, "alice")[0].state == "given"
        # Click 2: confirm.
        page.click("#confirm")
        page.wait_for_selector("#result")
        assert page.locator("#result").inner_text() == "Consent withdrawn"
        _shot(page, "02-withdrawn")
        with db.session_scope(engine) as s:
            view = lifecycle.current(s, "alice")[0]
            last = s.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq).desc())).first()
        assert view.state == "withdrawn"
        assert (last.channel, last.actor_type) == ("email_link", "subject")

        # The compliance officer signs in once and sees it on the dashboard.
        page.goto(f"{base}/dashboard")
        assert page.locator("h1").inner_text() == "Sign in"
        page.fill("#token", tokens.compliance)
        page.click("button[type=submit]")
        page.wait_for_selector("text=Consent at a glance")
        assert page.url == f"{base}/dashboard"
        states = page.locator("#table-states tbody tr", has_text="news")
        cells = states.first.locator("td").all_inner_texts()
        header = page.locator("#table-states thead th").all_inner_texts()
        assert cells[header.index("withdrawn")] == "1"
        assert page.locator("#tile-withdrawals .n").inner_text() == "1"
        crm = page.locator("#table-delivery tbody tr", has_text="crm").first
        delivery_header = page.locator("#table-delivery thead th").all_inner_texts()
        assert crm.locator("td").all_inner_texts()[delivery_header.index("pending")] == "1"
        _shot(page, "03-dashboard")
        # The session cookie is HttpOnly and SameSite=Lax.
        (cookie,) = [c for c in page.context.cookies() if c["name"] == "cf_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    finally:
        page.close()


def test_preference_page_in_the_browser(engine, site, browser):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == "alice")).one()
        url = links.url(links.issue(s, LinkAction.PREFERENCES, sid))
    page = browser.new_page()
    try:
        page.goto(url)
        assert page.locator("h1").inner_text() == "Your choices"
        # Plain state words since issue 9 (they were the internal "given", "not given", ...).
        assert page.locator("#purpose-news .state").inner_text().startswith("You said yes on ")
        assert page.locator("#purpose-invoices .state").inner_text() == "Not given"
        _shot(page, "04-preferences")
        page.click("#grant-invoices")
        page.wait_for_selector("#done")
        assert page.locator("#purpose-invoices .state").inner_text().startswith("You said yes")
        page.click("#revoke-news")  # withdrawing: the same single button as giving
        page.wait_for_selector("#done")
        assert "withdrawn" in page.locator("#done").inner_text()
        assert page.locator("#purpose-news .state").inner_text() == "Withdrawn"
        _shot(page, "05-preferences-changed")
    finally:
        page.close()
    with db.session_scope(engine) as s:
        states = {v.purpose: v.state.value for v in lifecycle.current(s, "alice")}
        channels = set(s.exec(select(ConsentEvent.channel).where(col(ConsentEvent.seq) > 1)).all())
    assert states == {"news": "withdrawn", "invoices": "given"} and channels == {"web"}

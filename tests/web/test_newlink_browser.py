"""Asking for a new link, as a person does it in a real browser (Debian's Chromium through
Playwright, a real uvicorn server, a real SMTP sink), with JavaScript off and on: from a broken
link's page to the form, to the email, to the preference page it opens; and the same answer for an
address nobody has, with nothing sent."""

from __future__ import annotations

import re
import time

import pytest
from sqlmodel import select

from consentflow import db
from consentflow.models import EmailMessage
from consentflow.web.pages import newlink
from tests.support.browser import chromium, needs_chromium
from tests.support.web import seed, served

# What a browser shows and sends; the same changes on both databases are tests/web/test_links.py's
# and test_newlink.py's, so the browser runs on SQLite only.
pytestmark = [needs_chromium, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


@pytest.fixture
def site(engine, smtp_sink, monkeypatch):
    newlink.clients.clear()
    with served(monkeypatch) as base:
        seed(engine)
        yield base, smtp_sink
    newlink.clients.clear()


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test gets a fresh context (no shared cookies)."""
    with chromium() as launched:
        yield launched


@pytest.fixture(params=[False, True], ids=["js-off", "js-on"])
def page(request, browser):
    context = browser.new_context(java_script_enabled=request.param)
    yield context.new_page()
    context.close()


def _ask(page, base: str, address: str) -> str:
    """Open a broken link, follow its "new link" offer, send the form; the answer's text."""
    page.goto(f"{base}/l/not-a-real-token")
    page.click('a[href="/link/new"]')
    page.fill('input[name="email"]', address)
    page.click('form button[type="submit"]')
    page.wait_for_load_state()
    return page.inner_text("main")


def _wait_for(sink, n: int) -> list:
    deadline = time.monotonic() + 20
    while len(sink.received) < n and time.monotonic() < deadline:
        time.sleep(0.05)  # polling an outcome with a deadline, not a fixed wait
    return sink.received


def test_a_person_gets_a_new_link_by_email_and_it_opens_their_preferences(site, page):
    base, sink = site
    answer = _ask(page, base, "alice@example.com")
    (got,) = _wait_for(sink, 1)
    url = re.search(re.escape(base) + r"/l/\S+", got.part("plain")).group(0)
    page.goto(url)
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("form").count() > 0  # the preference page, with its choices
    assert "alice@example.com" not in answer  # the answer never echoes the address


def test_an_unknown_address_gets_the_same_answer_and_no_email(site, page, engine):
    base, sink = site
    unknown = _ask(page, base, "nobody@example.org")
    # A message is recorded (claimed) in the request's own transaction, before the answer.
    assert _messages(engine) == 0
    known = _ask(page, base, "alice@example.com")
    assert unknown == known
    assert _messages(engine) == 1
    received = _wait_for(sink, 1)
    assert [m.recipients for m in received] == [["alice@example.com"]]


def _messages(engine) -> int:
    with db.session_scope(engine) as s:
        return len(s.exec(select(EmailMessage)).all())

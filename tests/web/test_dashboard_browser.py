"""The dashboard in a real browser: signed in through the form, axe-core clean (WCAG 2.2 AA and
best practices) at 320 and 1440 CSS px, reflowed at 320 px (the page never scrolls sideways;
tables scroll in their own labelled boxes), the date-range picker, the staff nav (and none on
the people's pages), and numbers that lead to the lists of the people they count.

A real uvicorn server and Debian's Chromium (``tests/support/browser.py``); SQLite only, as the
other page tests (the page renders the same on either database).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from consentflow import db, lifecycle, subjects
from consentflow.delivery import ops
from consentflow.lifecycle import Actor
from consentflow.models import utcnow
from tests.support.browser import chromium, needs_chromium
from tests.support.web import seed, served
from tests.web.test_accessibility import ARTIFACTS, Audit

pytestmark = [
    needs_chromium,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def site(engine, monkeypatch):
    with served(monkeypatch) as base:
        tokens = seed(engine)
        with db.session_scope(engine) as s:
            for i in range(6):
                subjects.add(s, f"p{i}")
        with db.session_scope(engine) as s:
            for i in range(6):
                lifecycle.grant(s, f"p{i}", "news", Actor())
                lifecycle.grant(s, f"p{i}", "invoices", Actor())
            for i in range(3):
                lifecycle.revoke(s, f"p{i}", "news", Actor())
            ops.set_status(s, "crm", "pause", reason="maintenance window", actor="test")
        yield base, tokens


def _sign_in(page, base: str, token: str, path: str = "/dashboard") -> None:
    page.goto(f"{base}{path}")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Consent at a glance")


@pytest.mark.parametrize("width", [320])  # the narrowest: reflow and axe-core; CI time
def test_dashboard_is_clean_and_reflows(site, browser, width):
    base, tokens = site
    audit = Audit(browser, width, f"dashboard-{width}")
    try:
        page = audit.page
        _sign_in(page, base, tokens.compliance)
        audit.check("dashboard")
        sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert sizes[0] <= sizes[1] == width, f"the dashboard scrolls sideways: {sizes}"
        # Every table sits in its own labelled, focusable scrolling box.
        boxes = page.locator("div.table-scroll")
        assert boxes.count() >= 6
        assert page.locator("table").count() == page.locator("div.table-scroll table").count()
        for i in range(boxes.count()):
            box = boxes.nth(i)
            assert box.get_attribute("tabindex") == "0" and box.get_attribute("role") == "region"
            assert box.get_attribute("aria-label")
        # The chart tables are there as text, opened.
        page.locator("#chart-trend summary").click()
        assert page.locator("#chart-trend details table").is_visible()
        audit.check("dashboard-table-open")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
        # The verdict is in words and a symbol, not colour alone.
        crm = page.locator("#table-delivery tbody tr", has_text="crm").first
        assert "held" in crm.locator(".flag").inner_text()
        # The staff nav, this page current.
        current = page.locator("nav.staff a[aria-current=page]")
        assert current.inner_text() == "Dashboard" and current.get_attribute("href") == "/dashboard"
        assert page.locator("nav.staff a").all_inner_texts() == [
            "Dashboard",
            "People",
            "Lists",
            "Systems",
            "Flows",
        ]
        audit.assert_clean()
    finally:
        audit.close()


def test_the_range_picker_and_its_errors(site, browser):
    base, tokens = site
    audit = Audit(browser, 390, "dashboard-range")
    try:
        page = audit.page
        _sign_in(page, base, tokens.compliance)
        today = utcnow().date()
        since = today - timedelta(days=13)
        page.fill("#since", since.isoformat())
        page.fill("#until", today.isoformat())
        page.select_option("#measure", "grants")
        page.click("form.range button[type=submit]")
        page.wait_for_url(f"**/dashboard?since={since}&until={today}&measure=grants*")
        heading = page.locator("#h-chart-trend_purpose").inner_text()
        assert heading == "Grants per day, a line per purpose"
        assert page.locator("#measure").input_value() == "grants"
        rows = page.locator("#chart-trend details tbody tr")
        assert rows.count() == 14
        audit.check("range")
        # A bad date: a clear message on the page, the inputs marked, no 500.
        response = page.goto(f"{base}/dashboard?since=2026-02-30")
        assert response is not None and response.status == 422
        alert = page.locator("[role=alert]")
        assert "since: not a date; use YYYY-MM-DD" in alert.inner_text()
        assert page.locator("#since").get_attribute("aria-invalid") == "true"
        audit.check("range-error")
        audit.assert_clean()
    finally:
        audit.close()


def test_numbers_lead_to_their_lists(site, browser):
    base, tokens = site
    audit = Audit(browser, 1440, "dashboard-links")
    try:
        page = audit.page
        _sign_in(page, base, tokens.compliance)
        today = utcnow().date()

        def href(selector: str) -> str | None:
            return page.locator(selector).first.get_attribute("href")

        assert href("#tile-given a") == "/lists/consents?state=given"
        after = today + timedelta(days=1)  # a list's until is exclusive: today included
        assert href("#tile-withdrawals a") == (
            f"/lists/withdrawals?since={today - timedelta(days=89)}&until={after}"
        )
        assert href("#tile-expiring a") == "/lists/expiring?days=30"
        assert href("#tile-dead a") == "/lists/deliveries?status=dead"
        assert href("#tile-pending-deliveries a") == "/lists/deliveries?status=undelivered"
        header = page.locator("#table-states thead th").all_inner_texts()
        news = page.locator("#table-states tbody tr", has_text="news").first.locator("td")
        withdrawn = news.nth(header.index("withdrawn")).locator("a")
        assert withdrawn.inner_text() == "3"
        assert withdrawn.get_attribute("href") == "/lists/consents?purpose=news&state=withdrawn"
        health = page.locator("#table-delivery thead th").all_inner_texts()
        crm = page.locator("#table-delivery tbody tr", has_text="crm").first.locator("td")
        pending = crm.nth(health.index("pending")).locator("a")
        assert pending.inner_text() == "3"
        assert pending.get_attribute("href") == ("/lists/deliveries?system=crm&status=undelivered")
        day = page.locator("#chart-trend details tbody tr").last.locator("a")
        hrefs = [day.nth(i).get_attribute("href") for i in range(day.count())]
        assert f"/lists/withdrawals?since={today}&until={after}" in hrefs
        assert f"/lists/changes?action=grant&since={today}&until={after}" in hrefs
    finally:
        audit.close()


def test_the_peoples_pages_show_no_staff_nav(site, browser):
    base, _ = site
    audit = Audit(browser, 390, "people-no-nav")
    try:
        page = audit.page
        page.goto(f"{base}/link/new")
        assert page.locator("h1").count() == 1
        assert page.locator("nav.staff").count() == 0
        page.goto(f"{base}/login")
        assert page.locator("nav.staff").count() == 0
    finally:
        audit.close()

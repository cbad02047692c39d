"""The People pages in a real browser: a support agent signs in, searches, opens a result and
reads the person's record; axe-core finds no WCAG 2.2 AA violation on any of the pages (the
search form, the results, no match, a bad query, the drill-down, an erased subject's tombstone),
and at 320 CSS px no page scrolls sideways (wide tables scroll in their own box).

A real uvicorn server and Debian's Chromium through Playwright, as ``test_accessibility.py``
does (axe injected through the DevTools protocol, so the pages' strict CSP is kept). The pages
render the same on either database, so this runs on SQLite only.
"""

from __future__ import annotations

import re
from pathlib import Path

import axe_playwright_python
import pytest
from sqlmodel import Session, select

from consentflow import db, erasure, lifecycle, subjects
from consentflow.lifecycle import Actor
from consentflow.models import ActorType, Channel, Subject
from tests.support.browser import chromium, needs_chromium
from tests.support.web import seed, served

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
AXE_JS = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
RULE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]

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
    """The served app; alice with a long history (a withdrawal to crm), dora erased."""
    with served(monkeypatch) as base:
        toks = seed(engine)
        sam = Actor(ActorType.AGENT, Channel.SUPPORT, name="sam", reason="caller asked by phone")
        with db.session_scope(engine) as s:
            for _ in range(3):
                lifecycle.grant(s, "alice", "news", Actor())
                lifecycle.revoke(s, "alice", "news", sam)
            lifecycle.grant(s, "alice", "invoices", Actor())
            lifecycle.request(s, "bob", "news", Actor(ActorType.SYSTEM, Channel.SYSTEM))
            subjects.add(s, "dora", email="dora@example.com")
            lifecycle.grant(s, "dora", "news", Actor())
        with db.session_scope(engine) as s:
            erasure.erase(s, "dora", Actor(ActorType.AGENT, Channel.API, name="r"), reason="t-1")
        yield base, toks


def _axe(page, name: str, width: int) -> list[str]:
    """axe-core on what the page shows: one line per violation (or undecided check)."""
    page.wait_for_load_state("load")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_JS)
    options = {
        "runOnly": {"type": "tag", "values": RULE_TAGS},
        "resultTypes": ["violations", "incomplete"],
    }
    results = page.evaluate("options => axe.run(document, options)", options)
    found = results["violations"] + results["incomplete"]
    if not found:
        return []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"a11y-people-{name}-{width}.png"), full_page=True)
    return [
        f"{name} at {width}px: {v['id']} [{v['impact']}] {v['help']}: "
        + "; ".join(f"{n['target']}: {n['failureSummary']}" for n in v["nodes"]).replace("\n", " ")
        for v in found
    ]


def _no_sideways_scroll(page, name: str) -> None:
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"{name} scrolls sideways: {sizes}"


@pytest.mark.parametrize("width", [320])  # the narrowest: reflow and axe-core; CI time
def test_search_then_drill_down(engine, site, browser, width) -> None:
    base, toks = site
    with Session(engine) as s:
        tomb = s.exec(select(Subject).where(Subject.erased_at.is_not(None))).one()  # type: ignore[union-attr]
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_init_script(AXE_JS)
    page = context.new_page()
    failures: list[str] = []

    def check(name: str) -> None:
        failures.extend(_axe(page, name, width))
        _no_sideways_scroll(page, f"{name} at {width}px")

    try:
        page.goto(f"{base}/subjects")
        assert page.locator("h1").inner_text() == "Sign in"
        page.fill("#token", toks.support)
        page.click("button[type=submit]")
        page.wait_for_selector("text=Find a person")
        assert page.url == f"{base}/subjects"
        check("search")

        page.fill("#q", "Alice@Example.com")
        page.click("#search button[type=submit]")
        page.wait_for_selector("#results")
        rows = page.locator("#results tbody tr")
        assert rows.count() == 1
        assert "email" in rows.first.inner_text()
        check("results")

        with page.expect_navigation():
            rows.first.locator("a").click()
        assert page.url == f"{base}/subjects/alice"
        assert page.locator("h1").inner_text() == "Subject alice"
        news = page.locator("#consent-news").inner_text()
        assert "withdrawn" in news
        assert page.locator("#history tbody tr").count() == 7
        assert "caller asked by phone" in page.locator("#history").inner_text()
        assert page.locator("#deliveries tbody tr", has_text="crm").count() == 3
        assert "verified" in page.locator("#audit tbody").inner_text()
        assert "Every entry shown verifies" in page.locator("#audit-summary").inner_text()
        assert page.locator("#record").get_attribute("href") == "/subjects/alice/record"
        assert page.locator("#receipt").get_attribute("href") == "/api/v1/subjects/alice/receipt"
        assert "alice@example.com" not in page.content()
        check("drill-down")

        page.goto(f"{base}/subjects?q=nobody")
        assert "No such subject" in page.locator("#q-problem").inner_text()
        check("no-match")
        page.goto(f"{base}/subjects?q=a%20b")
        assert "not an external id" in page.locator("#q-problem").inner_text()
        check("bad-query")

        page.goto(f"{base}/subjects?q=dora")
        erased = page.locator("#results tbody tr", has_text="Erased subject")
        with page.expect_navigation():
            erased.locator("a").click()
        assert page.url == f"{base}/subjects/{tomb.external_id}"
        assert page.locator("#tombstone").count() == 1
        assert page.locator("#record").count() == 0 and page.locator("#receipt").count() == 0
        check("tombstone")
    finally:
        context.close()
    assert not failures, "axe-core found WCAG 2.2 AA violations:\n" + "\n".join(failures)


def test_the_check_finds_what_it_looks_for(engine, site, browser) -> None:
    """The axe helper is not blind: a page with an unlabelled input fails it."""
    base, _ = site
    context = browser.new_context(viewport={"width": 390, "height": 900})
    context.add_init_script(AXE_JS)
    page = context.new_page()
    try:
        page.goto(f"{base}/login")
        page.evaluate("document.querySelector('label[for=token]').remove()")
        found = _axe(page, "broken-login", 390)
    finally:
        context.close()
    assert any(re.search(r"\blabel\b", line) for line in found), found

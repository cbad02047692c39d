"""The Lists pages in a real browser: a compliance officer signs in, opens the index, a list,
filters it, pages through it with "Next page" and downloads its export; a support agent sees the
lists but no export link (and the export URL answers 403); a bad filter shows one line naming
the field. axe-core finds no WCAG 2.2 AA violation on any of the pages, and at 320 CSS px no page
scrolls sideways (the table scrolls in its own box).

A real uvicorn server and Debian's Chromium through Playwright, as ``test_accessibility.py``
does. The pages render the same on either database, so this runs on SQLite only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import axe_playwright_python
import httpx
import pytest
from sqlmodel import Session, select

from consentflow import db, lifecycle, subjects
from consentflow.lifecycle import Actor
from consentflow.models import ActorType, AuditEntry, Channel
from consentflow.reports import cohorts
from tests.support.browser import chromium, needs_chromium
from tests.support.web import seed, served

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
AXE_JS = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
RULE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
PEOPLE = [f"person-{i:03d}-with-a-rather-long-identifier" for i in range(130)]

pytestmark = [
    needs_chromium,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def browser() -> Any:
    with chromium() as b:
        yield b


@pytest.fixture
def site(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The served app; 130 people with a news consent (long ids: a wide table), 3 withdrawn."""
    with served(monkeypatch) as base:
        toks = seed(engine)
        with db.session_scope(engine) as s:
            for ext in PEOPLE:
                subjects.add(s, ext, email=f"{ext}@example.com")
                lifecycle.grant(s, ext, "news", Actor(ActorType.SUBJECT, Channel.WEB))
            for ext in PEOPLE[:3]:
                lifecycle.revoke(s, ext, "news", Actor(ActorType.SUBJECT, Channel.EMAIL_LINK))
        yield base, toks


def _axe(page: Any, name: str, width: int) -> list[str]:
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
    page.screenshot(path=str(ARTIFACTS / f"a11y-lists-{name}-{width}.png"), full_page=True)
    return [
        f"{name} at {width}px: {v['id']} [{v['impact']}] {v['help']}: "
        + "; ".join(f"{n['target']}: {n['failureSummary']}" for n in v["nodes"]).replace("\n", " ")
        for v in found
    ]


def _sign_in(page: Any, base: str, token: str, path: str) -> None:
    page.goto(f"{base}{path}")
    assert page.locator("h1").inner_text() == "Sign in"
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{path}")


@pytest.mark.parametrize("width", [320])  # the narrowest: reflow and axe-core; CI time
def test_filter_page_and_export_a_list(engine: Any, site: Any, browser: Any, width: int) -> None:
    base, toks = site
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    context.add_init_script(AXE_JS)
    page = context.new_page()
    failures: list[str] = []

    def check(name: str) -> None:
        failures.extend(_axe(page, name, width))
        sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert sizes[0] <= sizes[1], f"{name} at {width}px scrolls sideways: {sizes}"

    try:
        _sign_in(page, base, toks.compliance, "/lists")
        assert page.locator("h1").inner_text() == "Lists"
        assert page.locator("ul.cohorts li").count() == len(cohorts.DEFINITIONS)
        check("index")

        with page.expect_navigation():
            page.click("text=Consents")
        assert page.url == f"{base}/lists/consents"
        page.fill("#f-purpose", "news")
        page.select_option("#f-state", "given")
        with page.expect_navigation():
            page.click("#filters button[type=submit]")
        assert "purpose=news" in page.url and "state=given" in page.url
        rows = page.locator("table tbody tr")
        assert rows.count() == 100
        first_page = rows.all_inner_texts()
        assert PEOPLE[3] in first_page[0]  # the withdrawn three are filtered out
        assert all("given" in r for r in first_page)
        check("list")

        with page.expect_navigation():
            page.click("a[rel=next]")
        assert "cursor=" in page.url and "purpose=news" in page.url
        second_page = page.locator("table tbody tr").all_inner_texts()
        assert len(second_page) == len(PEOPLE) - 3 - 100
        assert not set(first_page) & set(second_page)
        assert page.locator("a[rel=next]").count() == 0
        check("next-page")

        with page.expect_navigation():
            page.locator("table tbody tr a").first.click()
        assert page.url == f"{base}/subjects/{PEOPLE[103]}"

        page.goto(f"{base}/lists/consents?purpose=news&state=given")
        with page.expect_download() as download:
            page.click("text=Export CSV")
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0] == ",".join(cohorts.DEFINITIONS[cohorts.Cohort.CONSENTS].columns)
        assert len(lines) == 1 + len(PEOPLE) - 3
        assert "@" not in "".join(lines)

        page.goto(f"{base}/lists/expiring?days=abc")
        problem = page.locator("#problem").inner_text()
        assert problem.startswith("days: a whole number") and "\n" not in problem
        check("bad-filter")
    finally:
        context.close()
    assert not failures, "axe-core found WCAG 2.2 AA violations:\n" + "\n".join(failures)
    with Session(engine) as s:
        (entry,) = s.exec(select(AuditEntry).where(AuditEntry.action == cohorts.EXPORTED)).all()
    assert entry.actor == "web:carol"
    assert entry.detail["count"] == len(PEOPLE) - 3
    assert entry.detail["filters"] == {"purpose": "news", "state": "given"}


def test_support_sees_the_lists_but_cannot_export(engine: Any, site: Any, browser: Any) -> None:
    base, toks = site
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        _sign_in(page, base, toks.support, "/lists/withdrawals")
        assert page.locator("table tbody tr").count() == 3
        assert page.locator("text=Export CSV").count() == 0
        cookies = {c["name"]: c["value"] for c in context.cookies()}
    finally:
        context.close()
    for suffix in (".csv", ".jsonl"):
        r = httpx.get(f"{base}/lists/withdrawals{suffix}", cookies=cookies)
        assert r.status_code == 403
        assert "support" in r.text
    # A system token has the API, not the workspace.
    r = httpx.get(f"{base}/lists", headers={"Authorization": f"Bearer {toks.system}"})
    assert r.status_code == 403

"""Acting from the workspace in a real browser (Debian's Chromium through Playwright, a real
uvicorn server): a support agent records a withdrawal for a caller, compliance pauses then resumes
a system, and every action page (and its confirmation step) has no axe-core violation (WCAG 2.2
AA) and reflows at 320 CSS px without the page scrolling sideways. The pages render the same on
either database (``test_actions.py`` runs both), so these run on SQLite only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import select

from consentflow import db, lifecycle
from consentflow.lifecycle import Actor
from consentflow.models import ConsentEvent, System
from tests.support.browser import chromium, needs_chromium
from tests.support.seeding import audit_entries
from tests.support.web import Tokens, seed, served
from tests.web.test_accessibility import Audit

pytestmark = [
    needs_chromium,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def site(engine, monkeypatch) -> Iterator[tuple[str, Tokens]]:  # type: ignore[no-untyped-def]
    with served(monkeypatch) as base:
        made = seed(engine)
        with db.session_scope(engine) as s:
            lifecycle.grant(s, "alice", "news", Actor())
        yield base, made


def _sign_in(audit: Audit, base: str, token: str) -> None:
    page = audit.page
    page.goto(f"{base}/login?next=/systems")  # not the dashboard: another page's business
    page.fill("#token", token)
    page.click('main form button[type="submit"]')
    page.wait_for_url(f"{base}/systems")


def _click(audit: Audit, selector: str) -> None:
    with audit.page.expect_navigation():
        audit.page.click(selector)


def _no_sideways_scroll(audit: Audit, name: str) -> None:
    sizes = audit.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"{name} scrolls sideways at {audit.width}px: {sizes}"


def test_support_records_a_withdrawal_for_a_caller(engine, site, browser) -> None:  # type: ignore[no-untyped-def]
    base, made = site
    audit = Audit(browser, 1440, "record")
    try:
        _sign_in(audit, base, made.support)
        page = audit.page
        audit.visit(f"{base}/subjects/alice/record", "record")
        page.select_option("#purpose", "news")
        page.check("#action-revoke")
        page.fill("#reason", "caller asked by phone, identity checked")
        _click(audit, "#continue")
        assert "Withdraw consent" in page.inner_text("main")
        audit.check("record-confirm")
        _click(audit, "#confirm")
        assert "Recorded: revoke for news" in page.inner_text("#recorded")
        audit.check("record-done")
        audit.assert_clean()
    finally:
        audit.close()
    with db.session_scope(engine) as s:
        last = s.exec(select(ConsentEvent).order_by(ConsentEvent.recorded_at.desc())).first()  # type: ignore[attr-defined]
        assert last is not None
        assert (last.action, last.state, last.actor, last.channel) == (
            "revoke", "withdrawn", "sam", "support",
        )  # fmt: skip
        assert last.reason == "caller asked by phone, identity checked"


def _status(engine) -> str:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return s.exec(select(System.status).where(System.name == "crm")).one()


def test_compliance_pauses_then_resumes_a_system(engine, site, browser) -> None:  # type: ignore[no-untyped-def]
    base, made = site
    audit = Audit(browser, 1440, "systems")
    try:
        _sign_in(audit, base, made.compliance)
        page = audit.page
        audit.visit(f"{base}/systems", "systems")
        page.fill("#reason-crm", "receiver maintenance")
        _click(audit, "#pause-crm")
        audit.check("pause-confirm")
        _click(audit, "#confirm")
        assert "Paused crm" in page.inner_text("#message")
        assert page.inner_text("#status-crm") == "paused"
        audit.check("systems-paused")
        _click(audit, "#resume-crm")
        _click(audit, "#confirm")
        assert "Resumed crm" in page.inner_text("#message")
        assert page.inner_text("#status-crm") == "active"
        audit.assert_clean()
    finally:
        audit.close()
    assert _status(engine) == "active"
    assert [e.actor for e in audit_entries(engine, "system.paused")] == ["carol"]
    assert [e.actor for e in audit_entries(engine, "system.resumed")] == ["carol"]


@pytest.mark.parametrize("width", [320])  # the narrowest: reflow and axe-core; CI time
def test_every_action_page_is_accessible_and_reflows(engine, site, browser, width) -> None:  # type: ignore[no-untyped-def]
    base, made = site
    audit = Audit(browser, width, "actions")
    try:
        _sign_in(audit, base, made.compliance)
        page = audit.page
        for path, name in [
            ("/subjects/alice/record", "record"),
            ("/systems", "systems"),
            ("/flows", "flows"),
            ("/purposes/news/revise", "revise"),
        ]:
            audit.visit(f"{base}{path}", name)
            _no_sideways_scroll(audit, name)
        page.fill("#title", "Monthly newsletter and offers")
        page.check("#kind-material")
        _click(audit, "#continue")
        assert "1 people, on the re-consent flow" in page.inner_text("main")
        audit.check("revise-confirm")
        _no_sideways_scroll(audit, "revise-confirm")
        audit.visit(f"{base}/flows", "flows-again")
        _click(audit, "#preview-expiry-sweep")
        audit.check("flow-confirm")
        _no_sideways_scroll(audit, "flow-confirm")
        # Confirming needs a Prefect server: tests/web/test_actions.py covers both answers.
        audit.assert_clean()
    finally:
        audit.close()

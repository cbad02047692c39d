"""WCAG 2.2 AA on every page a person sees, checked by axe-core in a real browser.

A real uvicorn server, Debian's Chromium through Playwright with JavaScript on (axe-core runs in
the page), at a phone width (390 CSS px) and a desktop width (1440): the grant, collection
follow-up, re-consent, renew (in force and not renewable) and revoke (one purpose and all) link
pages; the preference page with purposes in every state, the history and the receipt link; the
result page after each POST (yes, no, withdraw, renew, withdraw everything); the pages of a
broken and an expired link; the new-link form, its answer and its error; a problem page. axe-core
(the copy shipped by ``axe-playwright-python``) runs with the WCAG 2.0/2.1/2.2 A and AA rules and
must report no violation; on failure every violation is printed (rule, impact, help, the failing
nodes) and a screenshot of the page is saved under ``test-artifacts/``.

axe is injected through the DevTools protocol (Playwright's ``add_init_script``, into every
document the page loads, and ``evaluate`` should a document lack it), which the pages' strict
Content-Security-Policy (no scripts at all) does not block, so the pages are checked exactly as
they are served. axe reports in full only what the check reads (violations and incomplete;
``resultTypes``), which saves it listing every passing node. That the pages work without
JavaScript is ``test_people.py``'s business.

Beyond axe: the preference page reflows at 320 CSS px (WCAG 1.4.10) without the page scrolling
sideways, and a focused button shows a visible focus indicator (2.4.7). The pages render the
same on either database, so these tests run on SQLite only.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import axe_playwright_python
import pytest
from sqlmodel import col, select, update

from consentflow import db, lifecycle, links, purposes
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import Consent, Purpose, Subject, utcnow
from tests.support.browser import chromium, needs_chromium
from tests.support.web import seed, served

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
AXE_JS = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
#: The rules axe runs: WCAG 2.0, 2.1 and 2.2, levels A and AA; and axe's best practices
#: (landmarks, heading order, one h1, regions), which the pages meet too.
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
RULE_TAGS = [*WCAG_TAGS, "best-practice"]
WIDTHS = [390, 1440]

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
    """The served app, the public URL its own, with a controller identity for the footers, and
    carol, whose purposes are in every state a person can meet."""
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_NAME", "Example Shop Ltd")
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_PRIVACY_URL", "https://shop.example.com/privacy")
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_CONTACT", "privacy@shop.example.com")
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_DPO", "dpo@shop.example.com")
    with served(monkeypatch) as base:
        seed(engine)
        _carol(engine)
        yield base


def _carol(engine) -> None:
    """carol: news given, invoices refused, offers requested, surveys expired, partners ended by
    a material change, research withdrawn, analytics given under terms that changed since."""
    with db.session_scope(engine) as s:
        from consentflow import subjects

        subjects.add(s, "carol", email="carol@example.com")
        for key, title in [
            ("offers", "Offers by post"),
            ("surveys", "Satisfaction surveys"),
            ("partners", "Sharing with partners"),
            ("research", "Product research"),
            ("analytics", "Usage analytics"),
        ]:
            purposes.add(s, key, title=title, validity_days=30, description=f"About {title}.")
        actor = Actor()
        lifecycle.grant(s, "carol", "news", actor)
        lifecycle.refuse(s, "carol", "invoices", actor)
        lifecycle.request(s, "carol", "offers", actor)
        lifecycle.grant(s, "carol", "surveys", actor)
        lifecycle.grant(s, "carol", "partners", actor)
        lifecycle.grant(s, "carol", "research", actor)
        lifecycle.revoke(s, "carol", "research", actor)
        lifecycle.grant(s, "carol", "analytics", actor)
        lifecycle.request(s, "bob", "news", actor)
    with db.session_scope(engine) as s:  # surveys: its validity ended yesterday
        sid = s.exec(select(Subject.id).where(Subject.external_id == "carol")).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == "surveys")).one()
        ended = utcnow() - timedelta(days=1)
        s.execute(
            update(Consent)
            .where(col(Consent.subject_id) == sid, col(Consent.purpose_id) == pid)
            .values(valid_until=ended)
        )
    with db.session_scope(engine) as s:
        lifecycle.expire(s, "carol", "surveys")
        for key in ("partners", "analytics"):
            purposes.revise(
                s, key, material=True, title=f"New {key}", data_categories=["email", "orders"]
            )
    with db.session_scope(engine) as s:
        lifecycle.invalidate(s, "carol", "partners", Actor())


def _url(engine, action, subject="carol", purpose=None, ttl=None):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == purpose)).one() if purpose else None
        extra = {"ttl": ttl} if ttl is not None else {}
        return links.url(links.issue(s, action, sid, pid, **extra))


class Audit:
    """One browser page at one width; ``check`` runs axe on what it shows and keeps what fails."""

    def __init__(self, browser, width: int, test: str) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": 900}, java_script_enabled=True
        )
        self.context.add_init_script(AXE_JS)  # sent once, run in every document
        self.page = self.context.new_page()
        self.width = width
        self.test = test
        self.failures: list[str] = []

    def check(self, name: str) -> None:
        page = self.page
        page.wait_for_load_state("load")
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate(AXE_JS)
        # Passes and inapplicable rules are listed with one node each; the rest in full.
        options = {
            "runOnly": {"type": "tag", "values": RULE_TAGS},
            "resultTypes": ["violations", "incomplete"],
        }
        results = page.evaluate("options => axe.run(document, options)", options)
        # "incomplete": what axe could not decide (a contrast over an image, say) fails too.
        found = [(v, "") for v in results["violations"]]
        found += [(v, ", needs review") for v in results["incomplete"]]
        if not found:
            return
        shot = ARTIFACTS / f"a11y-{self.test}-{name}-{self.width}.png"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        where = re.sub(r"/l/[^/?]+", "/l/<token>", page.url)
        lines = [f"{name} at {self.width}px ({where}); screenshot {shot.name}:"]
        for v, review in found:
            lines.append(f"  {v['id']} [{v['impact']}{review}] {v['help']} ({v['helpUrl']})")
            for node in v["nodes"]:
                lines.append(f"    {node['target']}: {node['failureSummary']}".replace("\n", " "))
        self.failures.append("\n".join(lines))

    def visit(self, url: str, name: str) -> None:
        self.page.goto(url)
        self.check(name)

    def assert_clean(self) -> None:
        assert not self.failures, "axe-core found WCAG 2.2 AA violations:\n" + "\n".join(
            self.failures
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def audit(request, browser):
    name = re.sub(r"\W+", "-", request.node.originalname).strip("-")
    audited = Audit(browser, request.param, name)
    yield audited
    audited.close()


def test_link_pages(engine, site, audit):
    base = site
    audit.visit(_url(engine, LinkAction.GRANT, "bob", "invoices"), "grant")
    assert audit.page.locator("#refuse").count() == 1
    audit.visit(_url(engine, LinkAction.GRANT, "bob", "news"), "followup")
    audit.visit(_url(engine, LinkAction.GRANT, "carol", "partners"), "reconsent")
    assert audit.page.locator("#changes-partners").count() == 1
    audit.visit(_url(engine, LinkAction.GRANT, "carol", "news"), "grant-already-given")
    audit.visit(_url(engine, LinkAction.RENEW, "carol", "news"), "renew")
    audit.visit(_url(engine, LinkAction.RENEW, "carol", "invoices"), "renew-not-renewable")
    assert audit.page.locator("#not-renewable").count() == 1
    audit.visit(_url(engine, LinkAction.REVOKE, "carol", "news"), "revoke")
    audit.visit(_url(engine, LinkAction.REVOKE, "carol", "invoices"), "revoke-nothing")
    audit.visit(_url(engine, LinkAction.REVOKE, "carol"), "revoke-all")
    audit.visit(f"{base}/l/not-a-link", "broken-link")
    audit.visit(f"{base}/l/{'x' * 1001}", "link-too-long")  # the error page (message.html)
    assert audit.page.locator("#new-link").count() == 1
    audit.visit(f"{base}/nowhere", "not-found")
    expired = _url(engine, LinkAction.PREFERENCES, ttl=timedelta(seconds=-60))
    audit.visit(expired, "expired-link")
    assert audit.page.locator("#new-link").count() == 1
    # A problem page: the grant form sent without saying yes or no (as a hand-made POST would).
    audit.page.goto(_url(engine, LinkAction.GRANT, "bob", "invoices"))
    with audit.page.expect_navigation():
        audit.page.evaluate("document.querySelector('form.answers').submit()")
    assert audit.page.locator("h1").inner_text() == "Nothing was changed"
    audit.check("problem")
    audit.assert_clean()


def test_preference_page_in_every_state(engine, site, audit):
    audit.visit(_url(engine, LinkAction.PREFERENCES), "preferences")
    page = audit.page
    assert page.locator("#history tbody tr").count() >= 9
    assert page.locator("#receipt").count() == 1
    states = page.locator(".card .state").all_inner_texts()
    assert len(states) == 7  # every purpose, each state in words
    assert {"Expired", "Withdrawn", "You said no", "Waiting for your answer"} <= set(states)
    audit.visit(_url(engine, LinkAction.PREFERENCES, "bob"), "preferences-bob")
    audit.visit(_url(engine, LinkAction.PREFERENCES, "alice"), "preferences-empty-history")
    assert page.locator("#history-empty").count() == 1
    for lang in ("fr", "de"):  # longer words, another <html lang>
        audit.visit(_url(engine, LinkAction.PREFERENCES) + f"?lang={lang}", f"preferences-{lang}")
        assert page.locator("html").get_attribute("lang") == lang
    audit.assert_clean()


def test_result_pages(engine, site, audit):
    page = audit.page
    for subject, purpose, button, name in [
        ("bob", "invoices", "#confirm", "result-yes"),
        ("bob", "news", "#refuse", "result-no"),
        ("carol", "partners", "#confirm", "result-reconsent-yes"),
    ]:
        page.goto(_url(engine, LinkAction.GRANT, subject, purpose))
        page.click(button)
        page.wait_for_selector("#result")
        audit.check(name)
    page.goto(_url(engine, LinkAction.RENEW, "carol", "news"))
    page.click("#confirm")
    page.wait_for_selector("#result")
    audit.check("result-renew")
    page.goto(_url(engine, LinkAction.REVOKE, "carol", "news"))
    page.click("#confirm")
    page.wait_for_selector("#result")
    audit.check("result-withdraw")
    page.goto(_url(engine, LinkAction.REVOKE, "carol", "news"))
    audit.check("revoke-after-withdrawn")

    page.goto(_url(engine, LinkAction.PREFERENCES))
    for button, name in [
        ("#grant-offers", "preferences-yes"),
        ("#refuse-surveys", "preferences-no"),
        ("#renew-analytics", "preferences-confirm"),
        ("#withdraw-all", "preferences-withdraw-everything"),
    ]:
        page.click(button)
        page.wait_for_selector("#done")
        audit.check(name)
    audit.assert_clean()


def test_new_link_pages(engine, site, audit):
    base = site
    page = audit.page
    audit.visit(f"{base}/link/new", "new-link")
    # A malformed address, sent past the browser's own check: the form again, with the error.
    page.fill("#email", "not an address")
    with page.expect_navigation():
        page.evaluate("document.querySelector('#email').form.submit()")
    assert page.locator("#form-error").count() == 1
    audit.check("new-link-error")
    page.fill("#email", "nobody@example.com")  # unknown: the same answer, nothing is sent
    page.click("#send-link")
    page.wait_for_selector("#sent")
    audit.check("new-link-sent")
    audit.assert_clean()


@pytest.mark.parametrize("audit", [320], indirect=True, ids=["320px"])
def test_preference_page_reflows_at_320_px(engine, site, audit):
    """WCAG 1.4.10: at 320 CSS px the page does not scroll sideways (the history table may
    scroll inside its own box, a two-dimensional table being exempt)."""
    page = audit.page
    preferences = _url(engine, LinkAction.PREFERENCES)
    reconsent = _url(engine, LinkAction.GRANT, "carol", "partners")
    for url, name in [
        (preferences, "preferences"),
        (preferences + "?lang=de", "preferences-de"),
        (reconsent, "reconsent"),
        (reconsent + "?lang=de", "reconsent-de"),
    ]:
        page.goto(url)
        sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert sizes[0] <= sizes[1], f"{name} scrolls sideways at 320px: {sizes}"
        audit.check(f"reflow-{name}")
    audit.assert_clean()


def test_a_focused_button_shows_where_the_focus_is(engine, site, audit):
    """WCAG 2.4.7: moving to a button with the keyboard draws a visible outline around it."""
    page = audit.page
    page.goto(_url(engine, LinkAction.GRANT, "bob", "invoices"))
    page.focus("#confirm")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # keyboard focus, so :focus-visible applies
    assert page.evaluate("document.activeElement.id") == "confirm"
    style = page.locator("#confirm").evaluate(
        "e => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth]; }"
    )
    assert style[0] not in ("none", "") and float(style[1].rstrip("px")) >= 2, style


def test_the_check_finds_what_it_looks_for(engine, site, audit):
    """The check can fail: the issue's pale badge (2.77:1), a button without a name and a tiny
    target, added to a served page, are each reported, with the screenshot saved."""
    page = audit.page
    page.goto(f"{site}/link/new")
    page.evaluate(
        """() => {
        const main = document.querySelector('main');
        main.insertAdjacentHTML('beforeend',
          '<p><span style="background:#fff1e0;color:#c77700">Expired</span></p>' +
          '<button type="button" id="nameless"></button>' +
          '<p><a href="/x" style="display:inline-block;width:10px;height:10px"></a>' +
          '<a href="/y" style="display:inline-block;width:10px;height:10px">y</a></p>');
        }"""
    )
    audit.check("planted")
    (report,) = audit.failures
    for rule in ("color-contrast", "button-name", "link-name", "target-size"):
        assert f"\n  {rule} [" in report, report
    assert "#nameless" in report
    assert (ARTIFACTS / f"a11y-{audit.test}-planted-{audit.width}.png").exists()

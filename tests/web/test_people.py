"""The people's side in a real browser (Debian's Chromium through Playwright, a real uvicorn
server), with JavaScript off and on: saying no on every page that asks, withdrawing everything,
the history, the re-consent diff, the receipt download, and result pages that a reload or a
hand-edited URL cannot turn into a second change or a false confirmation."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from sqlmodel import col, func, select, update

from consentflow import db, i18n, lifecycle, links, purposes
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import ConsentEvent, Purpose, Subject, utcnow
from tests.support.browser import chromium, needs_chromium
from tests.support.web import bearer, seed, served

# What a browser shows and sends; the same changes on both databases are tests/web/test_links.py's
# and test_newlink.py's, so the browser runs on SQLite only.
pytestmark = [needs_chromium, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


@pytest.fixture
def site(engine, monkeypatch):
    with served(monkeypatch) as base:
        tokens = seed(engine)
        with db.session_scope(engine) as s:
            lifecycle.grant(s, "alice", "news", Actor())
        yield base, tokens


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test gets a fresh context (no shared cookies)."""
    with chromium() as launched:
        yield launched


@pytest.fixture(params=[False, True], ids=["js-off", "js-on"])
def page(request, browser):
    context = browser.new_context(java_script_enabled=request.param, accept_downloads=True)
    yield context.new_page()
    context.close()


def _url(engine, action, subject="alice", purpose=None):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == purpose)).one() if purpose else None
        return links.url(links.issue(s, action, sid, pid))


def _events(engine, subject="alice", action=None):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        stmt = select(ConsentEvent).where(ConsentEvent.subject_id == sid)
        if action:
            stmt = stmt.where(ConsentEvent.action == action)
        return s.exec(stmt.order_by(col(ConsentEvent.seq))).all()


def _count(engine):
    with db.session_scope(engine) as s:
        return s.exec(select(func.count()).select_from(ConsentEvent)).one()


@pytest.mark.parametrize("where", ["grant", "followup", "reconsent", "preferences"])
def test_no_thanks_everywhere_records_one_refusal(engine, site, page, where):
    with db.session_scope(engine) as s:
        if where == "followup":
            lifecycle.request(s, "bob", "news", Actor())
        if where == "reconsent":  # bob agreed to v1; the terms changed; the deadline passed
            lifecycle.grant(s, "bob", "news", Actor())
            purposes.revise(s, "news", material=True, title="Weekly newsletter")
    if where == "reconsent":
        with db.session_scope(engine) as s:
            lifecycle.invalidate(s, "bob", "news", Actor())
    if where == "preferences":
        page.goto(_url(engine, LinkAction.PREFERENCES, "bob"))
        refuse = "#refuse-news"
    else:
        page.goto(_url(engine, LinkAction.GRANT, "bob", "news"))
        refuse = "#refuse"
        yes, no = page.locator("#confirm"), page.locator("#refuse")
        # As prominent as yes: the same size and weight, neither chosen in advance.
        assert yes.evaluate("e => getComputedStyle(e).fontWeight") == no.evaluate(
            "e => getComputedStyle(e).fontWeight"
        )
        assert abs(yes.bounding_box()["height"] - no.bounding_box()["height"]) < 1
        assert page.evaluate("document.activeElement.tagName") == "BODY"
    if where == "reconsent":
        assert page.locator("#change-news-title").count() == 1
    page.click(refuse)
    confirmation = "#done" if where == "preferences" else "#result"
    page.wait_for_selector(confirmation)
    assert "no" in page.locator(confirmation).inner_text().lower()
    (refusal,) = _events(engine, "bob", "refuse")
    channel = "web" if where == "preferences" else "email_link"
    assert (refusal.channel, refusal.actor_type) == (channel, "subject")
    # A reload of the result page shows the same and records nothing.
    before = _count(engine)
    page.reload()
    page.wait_for_selector(confirmation)
    assert _count(engine) == before


def test_withdraw_everything_history_and_receipt(engine, site, page, tmp_path):
    base, tokens = site
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "invoices", Actor())
        lifecycle.refuse(s, "bob", "news", Actor())
    page.goto(_url(engine, LinkAction.PREFERENCES))
    history = page.locator("#history tbody tr")
    assert history.count() == 2 and "Invoices by email" in history.first.inner_text()
    assert "Bob" not in page.content() and "bob" not in page.locator("main").inner_text()
    with page.expect_download() as download:
        page.click("#receipt")
    path = tmp_path / "receipt.json"
    download.value.save_as(path)
    mine = json.loads(path.read_text())
    api = httpx.get(f"{base}/api/v1/subjects/alice/receipt", headers=bearer(tokens.admin)).json()
    for issued in ("receipt_id", "receipt_issued_at"):
        mine.pop(issued), api.pop(issued)
    assert mine == api
    page.click("#withdraw-all")
    page.wait_for_selector("#done")
    assert page.locator("#done").inner_text() == "We withdrew your consent for 2 purposes."
    revokes = _events(engine, action="revoke")
    assert [(e.channel, e.actor_type) for e in revokes] == [("web", "subject")] * 2
    assert page.locator("#history tbody tr").count() == 4
    assert page.locator("#withdraw-all").count() == 0


def test_reconsent_page_shows_what_changed_and_yes_confirms(engine, site, page):
    with db.session_scope(engine) as s:
        purposes.revise(
            s, "news", material=True, title="Weekly newsletter", data_categories=["email"]
        )
    page.goto(_url(engine, LinkAction.GRANT, "alice", "news"))
    assert page.locator("h1").inner_text() == "The terms changed: do you agree?"
    title = page.locator("#change-news-title td").all_inner_texts()
    assert title == ["Monthly newsletter", "Weekly newsletter"]
    assert page.locator("#change-news-data_categories td").all_inner_texts() == ["None", "email"]
    page.click("#confirm")
    page.wait_for_selector("#result")
    assert page.locator("#result").inner_text() == "Thank you: consent given"
    assert [e.channel for e in _events(engine, action="renew")] == ["email_link"]


def test_a_hand_edited_result_url_confirms_nothing(engine, site, page):
    page.goto(_url(engine, LinkAction.PREFERENCES))
    page.click("#revoke-news")
    page.wait_for_selector("#done")
    parts = urlsplit(page.url)
    value = parse_qs(parts.query)["r"][0]
    before = _count(engine)
    for query in (
        {"r": value[:-2] + ("AA" if not value.endswith("AA") else "BB")},
        {"done": "grant:news:done"},
    ):
        page.goto(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}")
        assert page.locator("h1").inner_text() == "Your choices"
        assert page.locator("#done").count() == 0
    assert _count(engine) == before


# ----------------------------------------------------------------------- in the person's language


@pytest.fixture(params=[False, True], ids=["js-off", "js-on"])
def browse(request, browser):
    """Open a page in a browser whose languages are ``languages`` (its Accept-Language)."""
    contexts = []

    def open_page(languages: str):
        context = browser.new_context(java_script_enabled=request.param, locale=languages)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def _set_locale(engine, subject, locale):
    with db.session_scope(engine) as s:
        s.exec(update(Subject).where(col(Subject.external_id) == subject).values(locale=locale))


def test_a_french_subject_sees_french(engine, site, browse):
    _set_locale(engine, "alice", "fr")
    page = browse("de-DE")  # the subject's language wins over the browser's
    page.goto(_url(engine, LinkAction.PREFERENCES))
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("h1").inner_text() == "Vos choix"
    today = i18n.format_date(utcnow(), "fr")
    assert page.locator("#purpose-news .state").inner_text() == f"Vous avez dit oui le {today}"
    assert page.locator("#refuse-invoices").inner_text() == "Non, merci"
    before = utcnow() + links.DEFAULT_TTL
    page.goto(_url(engine, LinkAction.GRANT, purpose="invoices"))
    after = utcnow() + links.DEFAULT_TTL
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("#refuse").inner_text() == "Non, merci"
    assert page.locator("#confirm").inner_text() == "Oui, j\u2019accepte"
    until = page.locator("#nothing-yet").inner_text()
    dates = {i18n.format_date(when, "fr") for when in (before, after)}  # a midnight between
    assert any(f"Ce lien est valable jusqu\u2019au {d}." in until for d in dates), until


def test_a_subject_without_a_locale_gets_the_browsers_language(engine, site, browse):
    _set_locale(engine, "bob", None)
    page = browse("de-DE")
    page.goto(_url(engine, LinkAction.GRANT, "bob", "news"))
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.locator("h1").inner_text() == "Sind Sie einverstanden?"
    assert page.locator("#refuse").inner_text() == "Nein, danke"


def test_an_unknown_locale_is_english(engine, site, browse):
    _set_locale(engine, "bob", "tlh")
    page = browse("tlh")
    page.goto(_url(engine, LinkAction.GRANT, "bob", "news"))
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("#refuse").inner_text() == "No, thanks"


def test_the_switchers_choice_survives_the_post(engine, site, browse):
    _set_locale(engine, "bob", "fr")
    page = browse("fr-FR")
    page.goto(_url(engine, LinkAction.GRANT, "bob", "news"))
    assert page.locator("#refuse").inner_text() == "Non, merci"
    page.click("nav.languages a[hreflang=es]")
    page.wait_for_selector("html[lang=es]")
    assert page.locator("#refuse").inner_text() == "No, gracias"
    page.click("#refuse")
    page.wait_for_selector("#result")
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.locator("#result").inner_text() == "Usted dijo que no"
    (refusal,) = _events(engine, "bob", "refuse")
    assert refusal.channel == "email_link"

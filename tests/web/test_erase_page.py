"""The erasure page (/l/{token}/erase): a person asks to be forgotten through a signed link and
confirms it. GET changes nothing; the button erases once (contact data gone, consents withdrawn,
audited with the subject as the actor, no email or token in the audit); a reload, a second POST
or the link opened again says "already deleted" and writes nothing; tampered, expired, wrong-action
links and forged forms change nothing; a refused erasure leaves no trace. Through the ASGI app
on both databases, and once in headless Chromium with axe-core at 390 and 1440 CSS px (SQLite)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text
from sqlmodel import col, func, select

from consentflow import db, lifecycle, links, subjects, tokens
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import AuditEntry, AuditHead, Consent, ConsentEvent, Subject
from consentflow.web.logs import redact_path
from consentflow.web.pages import erasure as page
from consentflow.web.pages import results
from tests.support.browser import chromium, needs_chromium
from tests.support.web import bearer, client, seed, served


@pytest.fixture
def web(engine):
    seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.grant(s, "alice", "invoices", Actor())
    with client() as c:
        yield c


def _token(engine, action=LinkAction.PREFERENCES, subject="alice", **kw):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        return links.issue(s, action, sid, **kw)


def _subject(engine, sid):
    with db.session_scope(engine) as s:
        row = s.get(Subject, sid)
        return (row.external_id, row.email, row.locale, row.erased_at)


def _sid(engine, external_id="alice"):
    with db.session_scope(engine) as s:
        return s.exec(select(Subject.id).where(Subject.external_id == external_id)).one()


def _footprint(engine):
    """Everything an erasure touches: events, the audit chain's head, the erased subjects."""
    with db.session_scope(engine) as s:
        events = s.exec(select(func.count()).select_from(ConsentEvent)).one()
        head = s.exec(select(AuditHead.seq)).one()
        erased = s.exec(select(func.count()).where(col(Subject.erased_at).is_not(None))).one()
    return events, head, erased


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_get_explains_and_changes_nothing(web, engine):
    token = _token(engine)
    before = _footprint(engine)
    preferences = web.get(f"/l/{token}")
    assert f'href="/l/{token}/erase" id="erase"' in preferences.text
    r = web.get(f"/l/{token}/erase")
    assert r.status_code == 200
    body = r.text
    for words in ("email address", "withdraw every consent", "without your name", "cannot be"):
        assert words in body, words
    assert "Monthly newsletter" in body and "Invoices by email" in body  # to be withdrawn
    assert f'method="post" id="erase-form" action="/l/{token}/erase"' in body
    assert f'href="/l/{token}" id="back"' in body  # the way back: the preference page
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    head = web.head(f"/l/{token}/erase")
    assert head.status_code == 200 and head.content == b""
    assert _footprint(engine) == before
    assert _subject(engine, _sid(engine))[1] == "alice@example.com"
    # The access log keeps the route, never the token or the query.
    assert redact_path(f"/l/{token}/erase?r=x&lang=fr") == "/l/{token}/erase"


def test_confirming_erases_once_then_says_already(web, engine):
    token, sid = _token(engine), _sid(engine)
    _, head, erased = _footprint(engine)
    form = web.get(f"/l/{token}/erase").text
    r = web.post(f"/l/{token}/erase", data={"csrf_token": _csrf(form)})
    assert r.status_code == 303
    where = urlsplit(r.headers["location"])
    assert where.path == f"/l/{token}/erase"
    assert parse_qs(where.query)["lang"] == ["en"]
    done = web.get(r.headers["location"])
    assert done.status_code == 200
    assert "Your data is deleted" in done.text
    assert "withdrew your consent for 2 purposes" in done.text
    assert "alice" not in done.text

    external_id, email, locale, erased_at = _subject(engine, sid)
    assert (email, locale) == (None, None) and erased_at is not None
    assert external_id != "alice"
    with db.session_scope(engine) as s:
        states = s.exec(select(Consent.state).where(Consent.subject_id == sid)).all()
        assert sorted(states) == ["withdrawn", "withdrawn"]
        ref = s.get(Subject, sid).subject_ref
        entries = s.exec(
            select(AuditEntry).where(col(AuditEntry.seq) > head).order_by(col(AuditEntry.seq))
        ).all()
    by_subject = [e for e in entries if e.subject_ref == ref]
    assert by_subject and all(e.actor_type == "subject" for e in by_subject)
    assert any("erase" in e.action for e in by_subject), [e.action for e in entries]
    assert {e.channel for e in by_subject} == {"email_link"}
    recorded = json.dumps([e.detail for e in entries]) + "".join(e.actor or "" for e in entries)
    assert page.REASON in recorded
    assert "alice@example.com" not in recorded and token not in recorded
    after = _footprint(engine)
    assert after[2] == erased + 1

    # A reload shows the same and writes nothing; so does a second POST, or the link again.
    assert "Your data is deleted" in web.get(r.headers["location"]).text
    again = web.post(f"/l/{token}/erase", data={"csrf_token": _csrf(form)})
    assert again.status_code == 303
    assert "Your data is already deleted" in web.get(again.headers["location"]).text
    plain = web.get(f"/l/{token}/erase")
    assert "Your data is already deleted" in plain.text and "csrf_token" not in plain.text
    assert _footprint(engine) == after


def test_an_erase_link_from_support_in_the_persons_language(web, engine):
    with db.session_scope(engine) as s:
        subjects.add(s, "dora", email="dora@example.com", locale="de")
        lifecycle.grant(s, "dora", "news", Actor())
        support = tokens.create(s, "sam-2", "support")[1]
    sid = _sid(engine, "dora")
    answer = web.post(
        "/api/v1/subjects/dora/links", headers=bearer(support), json={"action": "erase"}
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["action"] == "erase"
    token = urlsplit(answer.json()["url"]).path.removeprefix("/l/")
    opened = web.get(f"/l/{token}", follow_redirects=False)  # the URL in the email
    assert opened.status_code == 303 and opened.headers["location"] == f"/l/{token}/erase"
    form = web.get(f"/l/{token}/erase")
    assert '<html lang="de">' in form.text and "Ihre Daten löschen?" in form.text
    back = re.search(r'href="([^"]+)" id="back"', form.text).group(1)
    assert back != f"/l/{token}" and web.get(back).status_code == 200  # a preference link
    r = web.post(f"/l/{token}/erase", data={"csrf_token": _csrf(form.text)})
    # The subject's language is erased with them: the result page keeps the one they read.
    done = web.get(r.headers["location"])
    assert '<html lang="de">' in done.text and "Ihre Daten sind gelöscht" in done.text
    assert _subject(engine, sid)[1:3] == (None, None)


def test_bad_links_and_forged_forms_change_nothing(web, engine):
    token = _token(engine)
    before = _footprint(engine)
    body, _, sig = token.partition(".")
    tampered = f"{body}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"
    cases = [
        (tampered, 400),
        ("not-a-token", 400),
        (_token(engine, LinkAction.REVOKE), 400),  # a link for another action
        (_token(engine, LinkAction.ERASE, ttl=timedelta(seconds=-60)), 410),
    ]
    for bad, status in cases:
        for r in (web.get(f"/l/{bad}/erase"), web.post(f"/l/{bad}/erase", data={})):
            assert r.status_code == status, (bad, r.text)
            assert 'id="new-link"' in r.text
    # The preference page's own form token does not confirm an erasure, nor a forged one.
    other = _csrf(web.get(f"/l/{token}").text)
    for data in ({}, {"csrf_token": "123.forged"}, {"csrf_token": other}):
        assert web.post(f"/l/{token}/erase", data=data).status_code == 403
    # A result value made for the preference page (or none genuine) confirms nothing here.
    with db.session_scope(engine) as s:
        foreign = results.sign(s, token, results.Result("erase", None, "done", 2))
    for r in (foreign, "x.y"):
        assert "Delete your data?" in web.get(f"/l/{token}/erase", params={"r": r}).text
    assert _footprint(engine) == before


def test_a_refused_erasure_writes_nothing(web, engine):
    """The audit chain no longer verifies (an entry was edited): erasure is refused, 409, and
    nothing of it is committed."""
    token = _token(engine)
    form = web.get(f"/l/{token}/erase").text
    with db.session_scope(engine) as s:
        s.execute(text("UPDATE audit_entry SET actor = 'mallory' WHERE seq = 1"))
    before = _footprint(engine)
    r = web.post(f"/l/{token}/erase", data={"csrf_token": _csrf(form)})
    assert r.status_code == 409
    assert 'id="refused"' in r.text and "Nothing was changed" in r.text
    assert _footprint(engine) == before
    assert _subject(engine, _sid(engine))[1] == "alice@example.com"


# ------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@needs_chromium
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_in_a_browser_with_axe(engine, monkeypatch, browser):
    """From the preference page to the done page at a phone and a desktop width: axe-core finds
    no WCAG 2.2 AA violation on any of them; a reload changes nothing."""
    from tests.web.test_accessibility import Audit

    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_NAME", "Example Shop Ltd")
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_CONTACT", "privacy@shop.example.com")
    with served(monkeypatch):
        seed(engine)
        for width in (390, 1440):
            name = f"w{width}"
            with db.session_scope(engine) as s:
                subjects.add(s, name, email=f"{name}@example.com")
                lifecycle.grant(s, name, "news", Actor())
                sid = s.exec(select(Subject.id).where(Subject.external_id == name)).one()
                url = links.url(links.issue(s, LinkAction.PREFERENCES, sid))
            audit = Audit(browser, width, "erase-page")
            try:
                p = audit.page
                p.goto(url)  # the preference page, its entry included: test_accessibility
                p.click("#erase")
                p.wait_for_selector("#erase-form")
                audit.check("erase")
                assert p.locator("#controller").count() == 1
                p.click("#confirm")
                p.wait_for_selector("#erased")
                audit.check("erased")
                assert _subject(engine, sid)[1] is None
                before = _footprint(engine)
                p.reload()
                p.wait_for_selector("#erased")
                p.goto(url + "/erase")
                p.wait_for_selector("#already")
                audit.check("already")
                assert _footprint(engine) == before
                audit.assert_clean()
            finally:
                audit.close()

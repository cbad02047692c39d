"""Issue 14, defect 6: an email link that would give consent (a grant or renew link) is bound to
the person's choice at the time it was issued; a "no" they said later (withdrawal, refusal, by any
way) supersedes it. Through the real pages, on both databases."""

from __future__ import annotations

import base64
import json
import re

import pytest
from sqlmodel import func, select

from consentflow import db, keys, lifecycle, links, purposes, subjects
from consentflow.keys import instance_secret
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import AuditHead, ConsentEvent, Purpose, Subject
from tests.support.web import bearer, client, seed

STALE = "After this email was sent, you said no to this purpose."


@pytest.fixture
def tokens(engine):
    return seed(engine)


@pytest.fixture
def web(engine, tokens):
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with client() as c:
        yield c


def _ids(engine, subject, purpose):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == purpose)).one() if purpose else None
    return sid, pid


def _token(engine, action, subject="alice", purpose="news"):
    sid, pid = _ids(engine, subject, purpose)
    with db.session_scope(engine) as s:
        return links.issue(s, action, sid, pid)


def _unbound(engine, action, subject="alice", purpose="news"):
    """A link as issued before links were bound (no ``c`` claim), signed as ever."""
    sid, pid = _ids(engine, subject, purpose)
    claims = {"a": action.value, "s": sid, "p": pid, "e": 4_000_000_000}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with db.session_scope(engine) as s:
        key = keys.derive(instance_secret(s), f"consentflow-link:{action.value}")
        sig = base64.urlsafe_b64encode(keys.derive(key, body)).rstrip(b"=").decode()
    return f"{body}.{sig}"


def _state(engine, subject="alice", purpose="news"):
    with db.session_scope(engine) as s:
        views = {v.purpose: v for v in lifecycle.current(s, subject)}
    return views[purpose].state.value if purpose in views else None


def _footprint(engine):
    with db.session_scope(engine) as s:
        n = s.exec(select(func.count()).select_from(ConsentEvent)).one()
        return n, s.exec(select(AuditHead.seq)).one()


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _preferences_link(html):
    found = re.search(r'href="(/l/[^"?]+)[^"]*" id="preferences"', html) or re.search(
        r'href="(/l/[^"?]+)[^"]*" id="next-step"', html
    )
    assert found, "no link to the preference page"
    return found.group(1)


def _preference_page_says(web, token, op, purpose="news"):
    """The person changes their mind on their preference page (channel web)."""
    html = web.get(f"/l/{token}").text
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(html), "op": op, "purpose": purpose})
    assert r.status_code == 303, r.text


def _stale_page_offers_preferences(web, engine, html):
    assert STALE in html and 'id="confirm"' not in html and 'value="yes"' not in html
    prefs = web.get(_preferences_link(html))
    assert prefs.status_code == 200 and "Your choices" in prefs.text


def test_a_grant_link_sent_before_a_withdrawal_does_not_regrant_after_it(web, engine):
    with db.session_scope(engine) as s:  # a material revision: a re-consent email goes out
        purposes.revise(s, "news", material=True, title="Weekly newsletter")
    grant = _token(engine, LinkAction.GRANT)
    page = web.get(f"/l/{grant}")
    assert "The terms changed: do you agree?" in page.text
    # Then the person withdraws on their preference page.
    _preference_page_says(web, _token(engine, LinkAction.PREFERENCES, purpose=None), "revoke")
    assert _state(engine) == "withdrawn"
    before = _footprint(engine)
    # The old email's page now says why it no longer acts, and offers the preference page.
    stale = web.get(f"/l/{grant}")
    assert stale.status_code == 200
    _stale_page_offers_preferences(web, engine, stale.text)
    # Its "yes" (from the page still open in a tab) changes nothing.
    r = web.post(f"/l/{grant}", data={"csrf_token": _csrf(page.text), "answer": "yes"})
    assert r.status_code == 409 and "Nothing was changed" in r.text and STALE in r.text
    assert web.get(_preferences_link(r.text)).status_code == 200
    assert _state(engine) == "withdrawn" and _footprint(engine) == before


def test_a_renew_link_sent_before_a_withdrawal_by_support_does_not_renew(web, engine, tokens):
    renew = _token(engine, LinkAction.RENEW)
    page = web.get(f"/l/{renew}")
    assert "Renew your consent?" in page.text
    r = web.post(
        "/api/v1/subjects/alice/consents/news/revoke",
        json={"reason": "asked by phone"},
        headers=bearer(tokens.support),
    )
    assert r.status_code == 200, r.text
    before = _footprint(engine)
    _stale_page_offers_preferences(web, engine, web.get(f"/l/{renew}").text)
    r = web.post(f"/l/{renew}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 409 and STALE in r.text
    assert _state(engine) == "withdrawn" and _footprint(engine) == before


def test_a_request_link_does_not_turn_a_later_refusal_into_a_yes(web, engine):
    with db.session_scope(engine) as s:
        lifecycle.request(s, "bob", "news", Actor())
    grant = _token(engine, LinkAction.GRANT, subject="bob")
    html = web.get(f"/l/{grant}").text
    _preference_page_says(
        web, _token(engine, LinkAction.PREFERENCES, subject="bob", purpose=None), "refuse"
    )
    before = _footprint(engine)
    r = web.post(f"/l/{grant}", data={"csrf_token": _csrf(html), "answer": "yes"})
    assert r.status_code == 409 and STALE in r.text
    assert _state(engine, subject="bob") == "refused" and _footprint(engine) == before
    # "No, thanks" gives nothing, so it is never refused as stale: already said, nothing written.
    r = web.post(f"/l/{grant}", data={"csrf_token": _csrf(html), "answer": "no"})
    assert r.status_code == 303 and _footprint(engine) == before


def test_a_later_yes_does_not_supersede_a_link_that_says_yes(web, engine):
    renew = _token(engine, LinkAction.RENEW)
    html = web.get(f"/l/{renew}").text
    prefs = _token(engine, LinkAction.PREFERENCES, purpose=None)
    _preference_page_says(web, prefs, "revoke")
    _preference_page_says(web, prefs, "grant")  # withdrew, then said yes again: yes stands
    r = web.post(f"/l/{renew}", data={"csrf_token": _csrf(html)})
    assert r.status_code == 303 and _state(engine) == "given"
    assert "Consent renewed" in web.get(r.headers["location"]).text


def test_a_link_issued_after_the_no_asks_again(web, engine):
    _preference_page_says(web, _token(engine, LinkAction.PREFERENCES, purpose=None), "revoke")
    grant = _token(engine, LinkAction.GRANT)  # a new request, sent after the withdrawal
    html = web.get(f"/l/{grant}").text
    assert STALE not in html and 'value="yes"' in html
    r = web.post(f"/l/{grant}", data={"csrf_token": _csrf(html), "answer": "yes"})
    assert r.status_code == 303 and _state(engine) == "given"
    # Pressing yes twice (a double click) is not stale: the later choice was this yes.
    again = web.post(f"/l/{grant}", data={"csrf_token": _csrf(html), "answer": "yes"})
    assert again.status_code == 303 and "already given" in web.get(again.headers["location"]).text


def test_withdrawing_is_never_stale(web, engine):
    """An old revoke link (also the RFC 8058 one-click target) withdraws whatever came since."""
    revoke = _token(engine, LinkAction.REVOKE)
    html = web.get(f"/l/{revoke}").text
    prefs = _token(engine, LinkAction.PREFERENCES, purpose=None)
    _preference_page_says(web, prefs, "revoke")
    _preference_page_says(web, prefs, "grant")
    r = web.post(f"/l/{revoke}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and _state(engine) == "withdrawn"
    _preference_page_says(web, prefs, "grant")
    r = web.post(f"/l/{revoke}", data={"csrf_token": _csrf(html)})
    assert r.status_code == 303 and _state(engine) == "withdrawn"


def test_links_issued_before_binding_are_refused_only_after_a_no(web, engine):
    renew = _unbound(engine, LinkAction.RENEW)
    html = web.get(f"/l/{renew}").text
    assert STALE not in html and 'id="confirm"' in html  # the person's last word is yes
    r = web.post(f"/l/{renew}", data={"csrf_token": _csrf(html)})
    assert r.status_code == 303 and _state(engine) == "given"
    _preference_page_says(web, _token(engine, LinkAction.PREFERENCES, purpose=None), "revoke")
    before = _footprint(engine)
    _stale_page_offers_preferences(web, engine, web.get(f"/l/{renew}").text)
    r = web.post(f"/l/{renew}", data={"csrf_token": _csrf(html)})
    assert r.status_code == 409 and _footprint(engine) == before


def test_the_stale_page_speaks_the_persons_language(web, engine):
    with db.session_scope(engine) as s:
        subjects.add(s, "zoe", locale="fr")
        lifecycle.grant(s, "zoe", "news", Actor())
    renew = _token(engine, LinkAction.RENEW, subject="zoe")
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "zoe", "news", Actor())
    html = web.get(f"/l/{renew}").text
    assert '<html lang="fr"' in html and STALE not in html
    assert "Après l\u2019envoi de cet e-mail, vous avez dit non à cette finalité." in html
    _preferences_link(html)

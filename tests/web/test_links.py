"""Email-link pages and the preference page, through the ASGI app, on both databases."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from sqlmodel import func, select, update

from consentflow import db, lifecycle, links, purposes
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import AuditHead, Consent, ConsentEvent, Purpose, Subject, utcnow
from tests.support.web import client, seed


@pytest.fixture
def web(engine):
    seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with client() as c:
        yield c


def _token(engine, action, subject="alice", purpose="news", **kw):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == purpose)).one() if purpose else None
        return links.issue(s, action, sid, pid, **kw)


def _state(engine, purpose="news", subject="alice"):
    with db.session_scope(engine) as s:
        views = {v.purpose: v for v in lifecycle.current(s, subject)}
    return views[purpose].state.value if purpose in views else None


def _footprint(engine):
    """Everything a change would touch: the event count and the audit chain head."""
    with db.session_scope(engine) as s:
        n = s.exec(select(func.count()).select_from(ConsentEvent)).one()
        head = s.exec(select(AuditHead.seq)).one()
    return n, head


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _last_event(engine):
    with db.session_scope(engine) as s:
        return s.exec(select(ConsentEvent).order_by(ConsentEvent.recorded_at.desc())).first()


def test_get_shows_a_confirmation_and_changes_nothing(web, engine):
    token = _token(engine, LinkAction.REVOKE)
    before = _footprint(engine)
    for _ in range(3):  # a mail scanner prefetching the link, twice, then the person
        page = web.get(f"/l/{token}")
        assert page.status_code == 200
        assert "Withdraw your consent?" in page.text and "Monthly newsletter" in page.text
    assert _footprint(engine) == before and _state(engine) == "given"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_confirming_withdraws_with_channel_email_link(web, engine):
    token = _token(engine, LinkAction.REVOKE)
    page = web.get(f"/l/{token}")
    web.cookies.clear()  # the form needs no cookie: its CSRF token is bound to the link
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 200 and "Consent withdrawn" in r.text
    assert _state(engine) == "withdrawn"
    e = _last_event(engine)
    assert (e.action, e.channel, e.actor_type) == ("revoke", "email_link", "subject")
    # Again: nothing to do, said plainly, nothing written.
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 200 and "Already withdrawn" in r.text
    assert _footprint(engine) == before


def test_post_without_csrf_changes_nothing(web, engine):
    token = _token(engine, LinkAction.REVOKE)
    before = _footprint(engine)
    for data in ({}, {"csrf_token": "123.forged"}, {"csrf_token": _csrf_for_other(engine, web)}):
        r = web.post(f"/l/{token}", data=data)
        assert r.status_code == 403 and "Nothing was changed" in r.text
    assert _footprint(engine) == before and _state(engine) == "given"


def _csrf_for_other(engine, web):
    """A genuine CSRF token, but issued for another link."""
    return _csrf(web.get(f"/l/{_token(engine, LinkAction.RENEW)}").text)


def test_rfc8058_one_click_needs_no_cookie_never_redirects_and_is_idempotent(web, engine):
    token = _token(engine, LinkAction.REVOKE)
    body = "List-Unsubscribe=One-Click"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    web.cookies.clear()
    r = web.post(f"/l/{token}", content=body, headers=headers)
    assert r.status_code == 200 and "location" not in r.headers and "set-cookie" not in r.headers
    assert _state(engine) == "withdrawn"
    assert _last_event(engine).channel == "email_link"
    before = _footprint(engine)
    again = web.post(f"/l/{token}", content=body, headers=headers)
    assert again.status_code == 200 and "location" not in again.headers
    assert _footprint(engine) == before
    # multipart/form-data is allowed by RFC 8058 too.
    token2 = _token(engine, LinkAction.REVOKE, purpose=None)
    r = web.post(f"/l/{token2}", files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200


def test_one_click_only_unsubscribes(web, engine):
    token = _token(engine, LinkAction.RENEW)
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 400 and _footprint(engine) == before


def _tamper(token):
    body, _, sig = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["a"] = "revoke"  # a renew link dressed up as a revoke link, old signature kept
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{forged}.{sig}"


@pytest.mark.parametrize("kind", ["tampered", "wrong_action", "expired", "garbage", "truncated"])
def test_bad_links_get_a_clear_page_and_change_nothing(web, engine, kind):
    good = _token(engine, LinkAction.REVOKE)
    token = {
        "tampered": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "wrong_action": _tamper(_token(engine, LinkAction.RENEW)),
        "expired": _token(engine, LinkAction.REVOKE, now=utcnow() - timedelta(days=60)),
        "garbage": "not-a-token",
        "truncated": good.partition(".")[0],
    }[kind]
    before = _footprint(engine)
    page = web.get(f"/l/{token}")
    assert page.status_code in (400, 410)
    assert "Nothing was changed" in page.text
    if kind == "expired":
        assert page.status_code == 410 and "expired" in page.text
    r = web.post(f"/l/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code in (400, 410)
    r = web.post(f"/l/{token}", data={"csrf_token": "x"})
    assert r.status_code in (400, 410)
    assert _footprint(engine) == before and _state(engine) == "given"


def test_renew_link(web, engine):
    token = _token(engine, LinkAction.RENEW)
    page = web.get(f"/l/{token}")
    assert "Renew your consent?" in page.text
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 200 and "Consent renewed" in r.text
    e = _last_event(engine)
    assert (e.action, e.channel) == ("renew", "email_link")
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 409 and "Nothing was changed" in r.text
    assert _footprint(engine) == before


def test_grant_link_answers_requests_and_reconsent(web, engine):
    with db.session_scope(engine) as s:
        lifecycle.request(s, "bob", "news", Actor())
    token = _token(engine, LinkAction.GRANT, subject="bob")
    page = web.get(f"/l/{token}")
    assert "Do you agree?" in page.text
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 200 and _state(engine, subject="bob") == "given"
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert "already given" in r.text and _footprint(engine) == before
    # After a material revision, yes means: confirm the new notice.
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="Weekly newsletter")
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    with db.session_scope(engine) as s:
        view = next(v for v in lifecycle.current(s, "bob") if v.purpose == "news")
    assert view.state.value == "given" and view.purpose_version == 2


def test_preference_page_grant_renew_withdraw_recorded_as_web(web, engine):
    token = _token(engine, LinkAction.PREFERENCES, purpose=None)
    page = web.get(f"/l/{token}")
    assert page.status_code == 200
    assert "Monthly newsletter" in page.text and "Invoices by email" in page.text
    # Withdrawing is one button, like giving.
    assert 'id="revoke-news"' in page.text and 'id="grant-invoices"' in page.text
    csrf = _csrf(page.text)
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "revoke", "purpose": "news"})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/l/{token}?done=")
    assert "Your consent is withdrawn" in web.get(r.headers["location"]).text
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "grant", "purpose": "invoices"})
    assert r.status_code == 303
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "renew", "purpose": "invoices"})
    assert r.status_code == 303
    assert _state(engine) == "withdrawn" and _state(engine, "invoices") == "given"
    with db.session_scope(engine) as s:
        mine = s.exec(
            select(ConsentEvent.action, ConsentEvent.channel).where(ConsentEvent.channel == "web")
        ).all()
    assert sorted(mine) == [("grant", "web"), ("renew", "web"), ("revoke", "web")]
    # Bad requests change nothing.
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "grant", "purpose": "nope"})
    assert r.status_code == 404
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "delete", "purpose": "news"})
    assert r.status_code == 422
    r = web.post(f"/l/{token}", data={"op": "grant", "purpose": "news"})
    assert r.status_code == 403
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "renew", "purpose": "news"})
    assert r.status_code == 409
    assert _footprint(engine) == before


def test_unsubscribe_from_everything(web, engine):
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "invoices", Actor())
    token = _token(engine, LinkAction.REVOKE, purpose=None)
    page = web.get(f"/l/{token}")
    assert "Withdraw all your consents?" in page.text
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 200
    assert _state(engine) == "withdrawn" and _state(engine, "invoices") == "withdrawn"


def test_pages_escape_what_they_show(web, engine):
    with db.session_scope(engine) as s:
        purposes.add(s, "xss", title="<script>alert(1)</script>", validity_days=10)
    token = _token(engine, LinkAction.PREFERENCES, purpose=None)
    page = web.get(f"/l/{token}")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text


@pytest.mark.parametrize("action", [LinkAction.REVOKE, LinkAction.RENEW, LinkAction.PREFERENCES])
def test_head_answers_like_get_without_a_body_and_changes_nothing(web, engine, action):
    """Mail scanners check links with HEAD: same status and headers as GET, no body."""
    token = _token(engine, action, purpose=None if action is LinkAction.PREFERENCES else "news")
    before = _footprint(engine)
    get = web.get(f"/l/{token}")
    head = web.head(f"/l/{token}")
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["cache-control"] == "no-store"
    bad = web.head("/l/not-a-token")
    assert bad.status_code == 400 and bad.content == b""
    assert _footprint(engine) == before and _state(engine) == "given"


def _preferences_link(html):
    found = re.search(r'href="(/l/[^"]+)"', html)
    assert found, "no link to the preference page"
    return found.group(1)


@pytest.mark.parametrize("how", ["withdrawn", "lapsed"])
def test_renew_link_for_a_consent_no_longer_in_force_says_so(web, engine, how):
    """No 'Renew your consent?' button that would only answer 409: the page says the consent
    is not in force and offers the preference page, where it can be given again."""
    token = _token(engine, LinkAction.RENEW)
    with db.session_scope(engine) as s:
        if how == "withdrawn":
            lifecycle.revoke(s, "alice", "news", Actor())
        else:  # its validity ended; no sweep has recorded the expiry yet
            s.execute(update(Consent).values(valid_until=utcnow() - timedelta(days=1)))
    before = _footprint(engine)
    page = web.get(f"/l/{token}")
    assert page.status_code == 200
    assert "Renew your consent?" not in page.text and 'id="confirm"' not in page.text
    assert "This consent is no longer active" in page.text
    prefs = web.get(_preferences_link(page.text))
    assert prefs.status_code == 200 and "Your choices" in prefs.text
    assert _footprint(engine) == before
    # From there it can be given again: recorded like any preference-page change.
    r = web.post(
        _preferences_link(page.text),
        data={"csrf_token": _csrf(prefs.text), "op": "grant", "purpose": "news"},
    )
    assert r.status_code == 303 and _state(engine) == "given"
    with db.session_scope(engine) as s:
        last = s.exec(select(ConsentEvent).order_by(ConsentEvent.seq.desc())).first()
    assert (last.action, last.channel, last.actor_type) == ("grant", "web", "subject")


def test_renew_refused_after_the_page_was_shown_offers_the_preference_page(web, engine):
    token = _token(engine, LinkAction.RENEW)
    page = web.get(f"/l/{token}")
    assert "Renew your consent?" in page.text
    with db.session_scope(engine) as s:  # withdrawn elsewhere while the page was open
        lifecycle.revoke(s, "alice", "news", Actor())
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)})
    assert r.status_code == 409 and "Nothing was changed" in r.text
    assert web.get(_preferences_link(r.text)).status_code == 200
    assert _footprint(engine) == before


def test_preference_link_offered_expires_with_the_renew_link(web, engine):
    now = utcnow()
    token = _token(engine, LinkAction.RENEW, ttl=timedelta(days=2))
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
    prefs = _preferences_link(web.get(f"/l/{token}").text).removeprefix("/l/")
    with db.session_scope(engine) as s:
        link = links.verify(s, prefs, LinkAction.PREFERENCES)
    assert link.purpose_id is None
    assert now + timedelta(days=2) - timedelta(minutes=1) < link.expires_at
    assert link.expires_at <= now + timedelta(days=2, minutes=1)

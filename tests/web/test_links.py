"""Email-link pages and the preference page, through the ASGI app, on both databases."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import timedelta

import pytest
from sqlmodel import func, select, update

from consentflow import db, lifecycle, links, purposes, subjects, tokens
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import (
    AuditHead,
    Channel,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Purpose,
    Subject,
    utcnow,
)
from consentflow.web.pages import results
from tests.support.web import bearer, client, seed


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


def _follow(web, r):
    """A POST's answer: a 303 to the link's page with a signed result, then that page."""
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("/l/") and "?r=" in location
    return web.get(location)


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
    # Changed in issue 9: the POST redirects (303) to a result page, so a reload never re-posts.
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)}))
    assert r.status_code == 200 and "Consent withdrawn" in r.text
    assert _state(engine) == "withdrawn"
    e = _last_event(engine)
    assert (e.action, e.channel, e.actor_type) == ("revoke", "email_link", "subject")
    # Again: nothing to do, said plainly, nothing written.
    before = _footprint(engine)
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)}))
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
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)}))
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
    # Changed in issue 9: the page asks yes or no, so a POST must say which.
    yes = {"csrf_token": _csrf(page.text), "answer": "yes"}
    r = _follow(web, web.post(f"/l/{token}", data=yes))
    assert r.status_code == 200 and _state(engine, subject="bob") == "given"
    before = _footprint(engine)
    r = _follow(web, web.post(f"/l/{token}", data=yes))
    assert "already given" in r.text and _footprint(engine) == before
    # After a material revision, yes means: confirm the new notice.
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="Weekly newsletter")
    r = web.post(f"/l/{token}", data=yes)
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
    # Changed in issue 9: the result travels signed (?r=), not as an unsigned ?done=.
    assert r.status_code == 303 and r.headers["location"].startswith(f"/l/{token}?r=")
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
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(page.text)}))
    assert r.status_code == 200 and "Consent withdrawn" in r.text
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
    found = re.search(r'href="(/l/[^"?/]+)"', html)  # not the language switcher's ?lang= links
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
    # Changed in issue 14: a withdrawal after the link was sent supersedes it (the person's
    # later answer stands); a lapsed consent is simply no longer active. Both offer preferences.
    said = "Your later answer stands" if how == "withdrawn" else "This consent is no longer active"
    assert said in page.text
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


# ------------------------------------------------------------------ issue 9: the people's side


def _events(engine, subject="bob", action=None):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        stmt = select(ConsentEvent).where(ConsentEvent.subject_id == sid)
        if action:
            stmt = stmt.where(ConsentEvent.action == action)
        return s.exec(stmt).all()


def _requests(engine, subject="bob"):
    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        return [
            r.status for r in s.exec(select(ConsentRequest).where(ConsentRequest.subject_id == sid))
        ]


@pytest.mark.parametrize("page", ["grant", "followup", "reconsent_invalidated"])
def test_no_thanks_on_a_request_page_records_one_refuse_and_answers_the_request(web, engine, page):
    with db.session_scope(engine) as s:
        if page == "followup":
            lifecycle.request(s, "bob", "news", Actor())
        elif page == "reconsent_invalidated":
            lifecycle.grant(s, "bob", "news", Actor())
            purposes.revise(s, "news", material=True, title="Weekly newsletter")
    if page == "reconsent_invalidated":
        with db.session_scope(engine) as s:
            lifecycle.invalidate(s, "bob", "news", Actor())
    token = _token(engine, LinkAction.GRANT, subject="bob")
    html = web.get(f"/l/{token}").text
    # Yes and No side by side, the same kind of button, neither chosen in advance.
    yes = re.search(r'<button type="submit" name="answer" value="yes" id="confirm">', html)
    no = re.search(r'<button type="submit" name="answer" value="no" id="refuse">', html)
    assert yes and no and "No, thanks" in html and "checked" not in html
    assert "autofocus" not in html
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(html), "answer": "no"}))
    assert '<h1 id="result">You said no</h1>' in r.text
    (refusal,) = _events(engine, action="refuse")
    assert (refusal.channel, refusal.actor_type) == ("email_link", "subject")
    assert _state(engine, subject="bob") == "refused"
    assert "open" not in _requests(engine)
    # Refusing twice: "already recorded", one event, no error page.
    before = _footprint(engine)
    again = web.post(f"/l/{token}", data={"csrf_token": _csrf(html), "answer": "no"})
    assert "Already recorded" in _follow(web, again).text
    assert _footprint(engine) == before and len(_events(engine, action="refuse")) == 1


def test_no_to_new_terms_while_the_old_consent_is_in_force_withdraws_it(web, engine):
    """The rule book allows no refusal of a given consent: declining the new terms withdraws
    the consent (which also tells downstream systems to stop) and answers the request."""
    with db.session_scope(engine) as s:
        purposes.revise(
            s, "news", material=True, title="Weekly newsletter", data_categories=["email"]
        )
    token = _token(engine, LinkAction.GRANT)
    html = web.get(f"/l/{token}").text
    assert "The terms changed: do you agree?" in html
    assert 'id="change-news-title"' in html and "Monthly newsletter" in html
    assert 'id="change-news-data_categories"' in html
    r = _follow(web, web.post(f"/l/{token}", data={"csrf_token": _csrf(html), "answer": "no"}))
    assert "We will stop using your data" in r.text
    assert _state(engine) == "withdrawn"
    assert [e.channel for e in _events(engine, "alice", "revoke")] == ["email_link"]
    before = _footprint(engine)
    again = web.post(f"/l/{token}", data={"csrf_token": _csrf(html), "answer": "no"})
    assert "Already recorded" in _follow(web, again).text and _footprint(engine) == before


def test_a_grant_post_must_say_yes_or_no(web, engine):
    token = _token(engine, LinkAction.GRANT, subject="bob")
    html = web.get(f"/l/{token}").text
    before = _footprint(engine)
    for data in ({}, {"answer": "maybe"}):
        r = web.post(f"/l/{token}", data={"csrf_token": _csrf(html), **data})
        assert r.status_code == 422 and "Choose yes or no" in r.text
    assert _footprint(engine) == before


def test_preference_page_refuse_and_withdraw_everything(web, engine):
    token = _token(engine, LinkAction.PREFERENCES, purpose=None)
    html = web.get(f"/l/{token}").text
    assert 'id="grant-invoices"' in html and 'id="refuse-invoices"' in html
    csrf = _csrf(html)
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "refuse", "purpose": "invoices"})
    assert "You said no" in _follow(web, r).text
    (refusal,) = _events(engine, "alice", "refuse")
    assert refusal.channel == "web" and _state(engine, "invoices") == "refused"
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "refuse", "purpose": "invoices"})
    assert "already recorded" in _follow(web, r).text and _footprint(engine) == before
    # A consent in force is withdrawn, not refused: 409, nothing written.
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "refuse", "purpose": "news"})
    assert r.status_code == 409 and _footprint(engine) == before
    # Withdraw everything: one button, one withdrawal per given consent.
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "invoices", Actor())
    html = web.get(f"/l/{token}").text
    assert 'id="withdraw-all"' in html
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "withdraw_all"})
    assert "We withdrew your consent for 2 purposes." in _follow(web, r).text
    revokes = _events(engine, "alice", "revoke")
    assert sorted((e.channel, e.actor_type) for e in revokes) == [("web", "subject")] * 2
    assert 'id="withdraw-all"' not in web.get(f"/l/{token}").text
    before = _footprint(engine)
    r = web.post(f"/l/{token}", data={"csrf_token": csrf, "op": "withdraw_all"})
    assert "Nothing to withdraw" in _follow(web, r).text and _footprint(engine) == before


def _card(html, key):
    start = html.index(f'id="purpose-{key}"')
    end = html.find('<div class="card"', start)
    return html[start : end if end > 0 else None]


def test_preference_page_shows_what_each_purpose_means_and_own_history(web, engine):
    with db.session_scope(engine) as s:
        purposes.revise(
            s, "invoices", material=False, data_categories=["email", "billing address"],
            lawful_basis="contract",
        )  # fmt: skip
        lifecycle.refuse(s, "alice", "invoices", Actor())
        purposes.add(s, "survey", title="Surveys", validity_days=30)
        lifecycle.request(s, "alice", "survey", Actor())
    html = web.get(f"/l/{_token(engine, LinkAction.PREFERENCES, purpose=None)}").text
    card = _card(html, "invoices")
    assert "Your bills" in card and "email, billing address" in card
    assert "A contract with you" in card and "billing" in card  # the system that receives it
    assert "You said no" in card
    news = _card(html, "news")
    assert "crm" in news and "You said yes on" in news and "billing" not in news
    main = html[html.index("<main") :]
    assert "Waiting for your answer" in _card(html, "survey") and ">requested<" not in main
    history = html[html.index('id="history"') :]
    assert history.count("<tr>") == 4  # the header, the grant, the refusal and the request
    assert "You said no" in history and "You said yes" in history
    assert 'href="/l/' in html and '/receipt"' in html


def test_two_subjects_never_see_each_other(web, engine):
    with db.session_scope(engine) as s:
        purposes.add(s, "secret", title="Bob only", validity_days=30)
        lifecycle.grant(s, "bob", "secret", Actor())
        lifecycle.refuse(s, "bob", "invoices", Actor(channel=Channel.SUPPORT))
    alice = _token(engine, LinkAction.PREFERENCES, purpose=None)
    html = web.get(f"/l/{alice}").text
    history = html[html.index('id="history"') :]
    assert "Bob only" not in history and "support" not in history
    assert history.count("<tr>") == 2  # the header and alice's one grant
    receipt = web.get(f"/l/{alice}/receipt").json()
    assert receipt["pii_principal_id"] == "alice"
    processing = receipt["consent_record"]["processing"]
    assert [p["purposes"][0]["purpose"] for p in processing] == ["news"]
    bob_events = {str(e.id) for e in _events(engine, "bob")}
    assert not bob_events & {e["event_id"] for p in processing for e in p["events"]}


def test_receipt_download_is_the_api_receipt_through_a_preference_link_only(web, engine):
    with db.session_scope(engine) as s:
        admin = tokens.create(s, "receipt-admin", "admin")[1]
    before = _footprint(engine)
    token = _token(engine, LinkAction.PREFERENCES, purpose=None)
    r = web.get(f"/l/{token}/receipt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert "attachment" in r.headers["content-disposition"]
    api = web.get("/api/v1/subjects/alice/receipt", headers=bearer(admin)).json()
    mine = r.json()
    for issued in ("receipt_id", "receipt_issued_at"):  # fresh on every receipt
        mine.pop(issued), api.pop(issued)
    assert mine == api and mine["pii_principal_id"] == "alice"
    # The Kantara v1.1 form too; a format that does not exist is a 4xx page, no receipt.
    kantara = web.get(f"/l/{token}/receipt?format=kantara")
    assert kantara.status_code == 200 and kantara.json()["piiPrincipalId"] == "alice"
    assert 'filename="consent-receipt-kantara.json"' in kantara.headers["content-disposition"]
    bad = web.get(f"/l/{token}/receipt?format=pdf")
    assert bad.status_code == 422 and "alice" not in bad.text
    # Any other link, a tampered one or an expired one: the bad-link page, no receipt.
    for bad in (
        _token(engine, LinkAction.REVOKE),
        _token(engine, LinkAction.PREFERENCES, purpose=None, now=utcnow() - timedelta(days=60)),
        token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "garbage",
    ):
        r = web.get(f"/l/{bad}/receipt")
        assert r.status_code in (400, 410) and "pii_principal_id" not in r.text
        assert 'href="/link/new"' in r.text
    assert _footprint(engine) == before


def test_result_pages_cannot_be_faked_moved_or_replayed_for_ever(web, engine):
    token = _token(engine, LinkAction.PREFERENCES, purpose=None)
    revoke = _token(engine, LinkAction.REVOKE)
    before = _footprint(engine)
    # The old unsigned ?done= and hand-made values confirm nothing.
    for query in ("done=revoke:news:done", "r=", "r=abc.def", "r=" + "x" * 400):
        html = web.get(f"/l/{token}?{query}").text
        assert 'id="done"' not in html
        html = web.get(f"/l/{revoke}?{query}").text
        assert 'id="result"' not in html and "Withdraw your consent?" in html
    with db.session_scope(engine) as s:
        genuine = results.sign(s, token, results.Result("revoke", "news", "done"))
        stale = results.sign(
            s, token, results.Result("revoke", "news", "done"), now=time.time() - 3600
        )
    assert 'id="done"' in web.get(f"/l/{token}?r={genuine}").text
    # Bound to its link, short-lived, and its claims cannot be edited.
    assert 'id="result"' not in web.get(f"/l/{revoke}?r={genuine}").text
    assert 'id="done"' not in web.get(f"/l/{token}?r={stale}").text
    body, _, sig = genuine.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["a"] = "grant"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert 'id="done"' not in web.get(f"/l/{token}?r={forged}.{sig}").text
    assert _footprint(engine) == before


def test_reloading_a_result_page_records_nothing(web, engine):
    token = _token(engine, LinkAction.RENEW)
    html = web.get(f"/l/{token}").text
    r = web.post(f"/l/{token}", data={"csrf_token": _csrf(html)})
    before = _footprint(engine)
    for _ in range(3):
        assert "Consent renewed" in web.get(r.headers["location"]).text
    assert _footprint(engine) == before and len(_events(engine, "alice", "renew")) == 1


def test_the_press_the_button_sentence_only_where_there_is_a_button(web, engine):
    with_button = web.get(f"/l/{_token(engine, LinkAction.REVOKE)}").text
    assert "Nothing changes until you press a button" in with_button
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
    for action in (LinkAction.REVOKE, LinkAction.RENEW):
        html = web.get(f"/l/{_token(engine, action)}").text
        assert 'type="submit"' not in html and "until you press" not in html


@pytest.mark.parametrize("kind", ["expired", "tampered", "gone"])
def test_a_link_that_does_not_work_offers_a_new_one(web, engine, kind):
    if kind == "expired":
        token = _token(engine, LinkAction.REVOKE, now=utcnow() - timedelta(days=60))
    elif kind == "tampered":
        token = _tamper(_token(engine, LinkAction.RENEW))
    else:
        with db.session_scope(engine) as s:
            token = links.issue(s, LinkAction.PREFERENCES, 999_999)
    page = web.get(f"/l/{token}")
    assert page.status_code == {"expired": 410, "tampered": 400, "gone": 404}[kind]
    assert "Nothing was changed" in page.text and 'href="/link/new"' in page.text


def test_link_pages_speak_the_subjects_language(web, engine):
    with db.session_scope(engine) as s:
        subjects.add(s, "zoe", locale="fr")
    for action in (LinkAction.PREFERENCES, LinkAction.GRANT):
        token = _token(
            engine, action, subject="zoe", purpose=None if action == "preferences" else "news"
        )
        assert '<html lang="fr"' in web.get(f"/l/{token}").text

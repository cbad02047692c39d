"""Links on demand through the web: the public new-link page (``/link/new``) against a real SMTP
server, the support route ``POST /api/v1/subjects/{id}/links``, and the controller's identity on
people pages and in receipts. Both databases; the new-link flow once over real uvicorn too."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlmodel import select

from consentflow import db, settings
from consentflow.models import AuditEntry, AuditHead, EmailMessage
from consentflow.web.pages import newlink
from tests.support.web import bearer, client, seed, uvicorn_server

#: Plain http, so that the form's CSRF cookie (Secure under https) comes back over the test
#: client's and uvicorn's plain http; the https headers are tests/web/test_headers.py's.
PUBLIC = "http://consent.example.org"
CONTROLLER = {
    "CONSENTFLOW_PUBLIC_URL": PUBLIC,
    "CONSENTFLOW_CONTROLLER_NAME": "Acme Bakery SA",
    "CONSENTFLOW_CONTROLLER_PRIVACY_URL": "https://acme.example/privacy",
    "CONSENTFLOW_CONTROLLER_CONTACT": "privacy@acme.example",
    "CONSENTFLOW_CONTROLLER_DPO": "dpo@acme.example",
    "CONSENTFLOW_CONTROLLER_LOGO_URL": "https://cdn.acme.example/logo.png",
    "CONSENTFLOW_CONTROLLER_ADDRESS": "1 Rue du Pain, Paris",
}


@pytest.fixture
def people(engine, smtp_sink, monkeypatch):
    """The app with a configured controller, seeded data and a real SMTP sink."""
    for name, value in CONTROLLER.items():
        monkeypatch.setenv(name, value)
    settings.get_settings.cache_clear()
    tokens = seed(engine)
    newlink.clients.clear()
    with client() as c:
        yield c, tokens, smtp_sink
    newlink.clients.clear()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _ask(c, address: str, **extra):
    form = c.get("/link/new")
    assert form.status_code == 200
    return c.post("/link/new", data={"email": address, "csrf_token": _csrf(form.text), **extra})


def _comparable(r) -> tuple[int, str, tuple[str, ...]]:
    """What a person sees of an answer: status, page (form token aside), header names and
    cookies."""
    page = re.sub(r'name="csrf_token" value="[^"]+"', "", r.text)
    return r.status_code, page, tuple(sorted(k for k in r.headers if k != "content-length"))


def _messages(engine) -> list[EmailMessage]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(EmailMessage)).all())


def _head(engine) -> int:
    with db.session_scope(engine) as s:
        return s.exec(select(AuditHead.seq)).one()


def test_a_known_address_gets_one_email_with_a_working_preference_link(people, engine):
    c, _, sink = people
    r = _ask(c, " Alice@Example.com ")
    assert r.status_code == 200 and "Check your email" in r.text
    assert "alice@example.com" not in r.text.lower()  # never echoed back
    (got,) = sink.received
    assert got.recipients == ["alice@example.com"]
    assert "Acme Bakery SA" in got.message["Subject"]
    text, html = got.part("plain"), got.part("html")
    assert "Sent on behalf of Acme Bakery SA" in text and "privacy@acme.example" in text
    assert "https://acme.example/privacy" in html and 'alt="Acme Bakery SA"' in html
    url = re.search(re.escape(PUBLIC) + r"(/l/[A-Za-z0-9_.=-]+)", text).group(1)
    page = c.get(url)
    assert page.status_code == 200 and "Monthly newsletter" in page.text
    (row,) = _messages(engine)
    assert (row.kind, row.status) == ("preference_link", "sent")
    token = url.rpartition("/")[2]
    with db.session_scope(engine) as s:
        details = " ".join(str(e.detail) for e in s.exec(select(AuditEntry)).all())
    assert token.partition(".")[2] not in details and "alice@example.com" not in details


def test_an_unknown_address_gets_the_same_answer_and_nothing_is_sent(people, engine):
    c, _, sink = people
    known = _ask(c, "alice@example.com")
    before = _head(engine)
    unknown = _ask(c, "nobody@example.com")
    assert _comparable(unknown) == _comparable(known)
    assert unknown.cookies == known.cookies
    assert len(sink.received) == 1 and len(_messages(engine)) == 1
    assert _head(engine) == before  # nothing recorded for the unknown address


def test_requests_are_limited_per_address_with_the_same_answer(people, engine):
    c, _, sink = people
    answers = [_ask(c, "alice@example.com") for _ in range(4)]
    assert len(sink.to("alice@example.com")) == 3  # CONSENTFLOW_LINK_REQUESTS_PER_ADDRESS
    assert len({_comparable(a) for a in answers}) == 1
    # Counted in the database: a fresh app (another process) keeps counting.
    newlink.clients.clear()
    with client() as other:
        _ask(other, "alice@example.com")
    assert len(sink.to("alice@example.com")) == 3 and len(_messages(engine)) == 3


def test_requests_are_limited_per_client_with_the_same_answer(people, engine, monkeypatch):
    c, _, sink = people
    monkeypatch.setenv("CONSENTFLOW_LINK_REQUESTS_PER_CLIENT", "2")
    settings.get_settings.cache_clear()
    first = _ask(c, "nobody@example.com")
    _ask(c, "someone@example.com")
    limited = _ask(c, "alice@example.com")  # a known address, but this client asked too often
    assert _comparable(limited) == _comparable(first)
    assert sink.received == [] and _messages(engine) == []


def test_a_request_without_a_valid_form_token_is_refused_and_changes_nothing(people, engine):
    c, _, sink = people
    c.get("/link/new")
    before = _head(engine)
    no_token = c.post("/link/new", data={"email": "alice@example.com"})
    forged = c.post("/link/new", data={"email": "alice@example.com", "csrf_token": "1.abc"})
    page = c.get("/link/new")
    c.cookies.clear()  # a token without its cookie (another site posting the form)
    stolen = c.post(
        "/link/new", data={"email": "alice@example.com", "csrf_token": _csrf(page.text)}
    )
    for r in (no_token, forged, stolen):
        assert r.status_code == 403 and "open for too long" in r.text
    assert sink.received == [] and _messages(engine) == [] and _head(engine) == before


def test_a_malformed_address_is_a_422_and_sends_nothing(people, engine):
    c, _, sink = people
    r = _ask(c, "not an address")
    assert r.status_code == 422 and 'aria-invalid="true"' in r.text
    assert sink.received == [] and _messages(engine) == []


def test_over_real_http_the_email_arrives_after_the_answer(people, engine):
    _, _, sink = people
    with uvicorn_server() as base, httpx.Client(base_url=base) as h:
        form = h.get("/link/new")
        data = {"email": "alice@example.com", "csrf_token": _csrf(form.text)}
        r = h.post("/link/new", data=data)
        assert r.status_code == 200 and "Check your email" in r.text
        deadline = time.monotonic() + 20
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.05)  # polling an outcome with a deadline, not a fixed wait
        (got,) = sink.received
        url = re.search(re.escape(PUBLIC) + r"(/l/\S+)", got.part("plain")).group(1)
        assert h.get(url).status_code == 200


# ------------------------------------------------------------------------- expired links


def test_an_expired_or_broken_link_page_offers_a_new_link(people):
    c, _, _ = people
    page = c.get("/l/not-a-token")
    assert page.status_code in (400, 404, 410)
    assert 'href="/link/new"' in page.text


# ---------------------------------------------------------------------------- support API


def test_support_issues_a_link_through_the_api_and_the_audit_names_the_token(people, engine):
    c, t, _ = people
    r = c.post(
        "/api/v1/subjects/alice/links",
        headers=bearer(t.support),
        json={"action": "renew", "purpose": "news"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"subject", "action", "purpose", "url", "expires_at"}
    assert (body["subject"], body["action"], body["purpose"]) == ("alice", "renew", "news")
    assert body["url"].startswith(f"{PUBLIC}/l/")
    with db.session_scope(engine) as s:
        entry = s.exec(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.actor, entry.channel) == ("link.issued", "api:sam", "api")
    assert body["url"].rpartition("/l/")[2] not in str(entry.detail)
    page = c.get(body["url"].removeprefix(PUBLIC))
    assert page.status_code == 200 and "Monthly newsletter" in page.text


def test_the_link_route_is_for_support_and_checks_its_input(people, engine):
    c, t, _ = people
    url = "/api/v1/subjects/alice/links"
    assert c.post(url, json={"action": "preferences"}).status_code == 401
    for token in (t.system, t.compliance):
        r = c.post(url, headers=bearer(token), json={"action": "preferences"})
        assert r.status_code == 403
    assert c.post(url, headers=bearer(t.admin), json={"action": "preferences"}).status_code == 201
    before = _head(engine)
    bad = [
        ({"action": "forget"}, 422),
        ({"action": "renew"}, 422),
        ({"action": "preferences", "purpose": "news"}, 422),
        ({"action": "grant", "purpose": "nope"}, 404),
    ]
    for body, status in bad:
        r = c.post(url, headers=bearer(t.support), json=body)
        assert r.status_code == status and r.json()["detail"], (body, r.text)
    r = c.post("/api/v1/subjects/zoe/links", headers=bearer(t.support), json={"action": "revoke"})
    assert r.status_code == 404
    assert _head(engine) == before
    schema = c.get("/openapi.json").json()
    op = schema["paths"]["/api/v1/subjects/{subject}/links"]["post"]
    assert op["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/LinkOut"
    )


# ------------------------------------------------------------------ the controller's identity


def test_people_pages_carry_the_controller_in_their_footer(people):
    c, _, _ = people
    for path in ("/link/new",):
        html = c.get(path).text
        footer = html[html.index('<footer class="controller"') :]
        assert "Acme Bakery SA" in footer
        assert 'href="https://acme.example/privacy"' in footer
        assert 'href="mailto:privacy@acme.example"' in footer
        assert 'href="mailto:dpo@acme.example"' in footer
        assert '<img src="https://cdn.acme.example/logo.png" alt="Acme Bakery SA"' in footer


def test_the_receipt_names_the_controller(people):
    c, t, _ = people
    c.post("/api/v1/subjects/alice/consents/news/grant", headers=bearer(t.admin), json={})
    rec = c.get("/api/v1/subjects/alice/receipt", headers=bearer(t.compliance)).json()
    party = {
        "party_type": "dpv:DataController",
        "party_id": "https://acme.example/privacy",
        "party_name": "Acme Bakery SA",
        "party_address": "1 Rue du Pain, Paris",
        "party_contact": "privacy@acme.example",
        "party_url": "https://acme.example/privacy",
        "data_protection_officer": {
            "party_type": "dpv:DataProtectionOfficer",
            "party_contact": "dpo@acme.example",
        },
    }
    record = rec["consent_record"]
    assert record["pii_controllers"] == [party]
    assert all(block["pii_controllers"] == [party] for block in record["processing"])

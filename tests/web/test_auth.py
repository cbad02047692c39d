"""Tokens and scopes on every route; the sign-in page and its session cookie."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from fastapi.routing import APIRoute

from consentflow import db, settings, tokens
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.web import security
from consentflow.web.app import create_app
from consentflow.web.auth import Require
from tests.support.web import Tokens, bearer, client, seed

SCOPES = ("admin", "compliance", "support", "system", "metrics")
#: Routes anyone may call: their own proof is elsewhere (a signed link, a CSRF-checked form).
PUBLIC = {
    ("GET", "/api/v1/health"),
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/l/{token}"),
    ("HEAD", "/l/{token}"),
    ("POST", "/l/{token}"),
    ("GET", "/l/{token}/receipt"),
    ("GET", "/l/{token}/erase"),  # the signed link is the authority, as on every /l/ page
    ("HEAD", "/l/{token}/erase"),
    ("POST", "/l/{token}/erase"),
    ("GET", "/link/new"),
    ("POST", "/link/new"),
}
PATH_VALUES = {
    "subject": "alice",
    "purpose": "news",
    "action": "grant",
    "key": "news",
    "delivery_id": "1",
    "name": "crm",
}


def _requirement(route: APIRoute) -> Require | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Require):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def _routes() -> list[tuple[str, str, frozenset[str]]]:
    from consentflow.web import api, pages

    create_app()  # the app is made of exactly these two routers (and /openapi.json)
    found = []
    for route in [*api.router.routes, *pages.router.routes]:
        if not isinstance(route, APIRoute):
            continue
        for method in sorted(route.methods):
            req = _requirement(route)
            if req is None:
                assert (method, route.path) in PUBLIC, f"{method} {route.path} has no Require"
                continue
            found.append((method, route.path, frozenset(s.value for s in req.scopes)))
    return found


ROUTES = _routes()


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "states"), path)


def test_every_route_is_covered():
    assert len(ROUTES) >= 20
    paths = {p for _, p, _ in ROUTES}
    assert {"/dashboard", "/dashboard/{name}.csv", "/api/v1/check", "/api/v1/feed"} <= paths


@dataclass
class AllTokens(Tokens):
    """``seed``'s tokens and a ``metrics`` one (a Prometheus scraper's)."""

    metrics: str = ""

    def by_scope(self, scope: str) -> str:
        return self.metrics if scope == "metrics" else super().by_scope(scope)


def seed_all(engine) -> AllTokens:
    toks = seed(engine)
    with db.session_scope(engine) as s:
        _, metrics = tokens.create(s, "prometheus", "metrics")
    return AllTokens(**vars(toks), metrics=metrics)


@pytest.fixture
def app_client(engine):
    toks = seed_all(engine)
    with client() as c:
        yield c, toks


@pytest.mark.parametrize(
    ("method", "path", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_no_token_401_wrong_scope_403(app_client, method, path, allowed):
    c, t = app_client
    url = _url(path)
    assert c.request(method, url).status_code == 401
    assert c.request(method, url, headers=bearer("cf_not-a-real-token")).status_code == 401
    assert c.request(method, url, headers={"Authorization": "Basic abc"}).status_code == 401
    for scope in SCOPES:
        status = c.request(method, url, headers=bearer(t.by_scope(scope))).status_code
        if scope in allowed:
            assert status not in (401, 403), (scope, status)
        else:
            assert status == 403, (scope, status)


def test_scope_matrix_is_as_designed():
    by = {(m, p): a for m, p, a in ROUTES}
    assert by[("GET", "/api/v1/check")] == {"admin", "compliance", "support", "system"}
    assert by[("GET", "/api/v1/feed")] == {"admin", "compliance", "system"}
    assert by[("GET", "/dashboard")] == {"admin", "compliance"}
    act = ("POST", "/api/v1/subjects/{subject}/consents/{purpose}/{action}")
    assert by[act] == {"admin", "support"}
    assert by[("POST", "/api/v1/deliveries/{delivery_id}/replay")] == {"admin", "compliance"}
    assert by[("POST", "/api/v1/systems/{name}/{verb}")] == {"admin", "compliance"}
    assert by[("POST", "/api/v1/purposes/{key}/versions")] == {"admin", "compliance"}
    # A system token may do nothing but check (one person, or many before a transfer, for
    # itself only), read the feed and ask who it is.
    system_routes = {p for (m, p), a in by.items() if "system" in a}
    assert system_routes == {
        "/api/v1/check",
        "/api/v1/check/batch",
        "/api/v1/export/eligible",
        "/api/v1/feed",
        "/api/v1/me",
    }
    # Only an administrator erases a person through the API.
    assert by[("POST", "/api/v1/subjects/{subject}/erase")] == {"admin"}
    # A metrics token may scrape (and ask who it is), nothing else: no personal data.
    assert {(m, p) for (m, p), a in by.items() if "metrics" in a} == {
        ("GET", "/metrics"),
        ("GET", "/api/v1/me"),
    }
    assert by[("GET", "/metrics")] == {"admin", "compliance", "metrics"}


def test_token_create_validates(engine):
    seed(engine)
    with db.session_scope(engine) as s:
        with pytest.raises(InvalidInput, match="needs --system"):
            tokens.create(s, "x", "system")
        with pytest.raises(InvalidInput, match="system tokens only"):
            tokens.create(s, "x", "admin", system="crm")
        with pytest.raises(InvalidInput, match="unknown scope"):
            tokens.create(s, "x", "root")
        with pytest.raises(NotFound):
            tokens.create(s, "x", "system", system="nope")
        with pytest.raises(Conflict):
            tokens.create(s, "root", "admin")
        with pytest.raises(InvalidInput, match="system tokens only"):
            tokens.create(s, "x", "metrics", system="crm")


def test_cli_token_create_prints_once_and_json(cli, engine):
    seed(engine)
    r = cli("token", "create", "dora", "--scope", "compliance", "--json")
    assert r.code == 0, r.err
    import json

    data = json.loads(r.out)
    assert data["scope"] == "compliance" and data["token"].startswith("cf_")
    r = cli("token", "create", "crm2", "--scope", "system", "--system", "crm")
    assert r.code == 0 and r.out.strip().startswith("cf_")
    r = cli("token", "list", "--json")
    listed = json.loads(r.out)
    assert {"dora", "crm2"} <= {x["name"] for x in listed}
    assert all("token" not in x for x in listed)  # never shown again
    assert cli("token", "create", "x", "--scope", "system").code == 2
    r = cli("token", "create", "prometheus", "--scope", "metrics")
    assert r.code == 0 and r.out.strip().startswith("cf_"), r.err
    assert "(metrics)" in r.err
    listed = {x["name"]: x["scope"] for x in json.loads(cli("token", "list", "--json").out)}
    assert listed["prometheus"] == "metrics"
    r = cli("token", "create", "x", "--scope", "root")
    assert r.code == 2 and "metrics" in r.err  # the choices come from tokens.Scope
    assert "metrics" in cli("token", "create", "--help").out
    assert cli("token", "revoke", "dora").code == 0
    with db.session_scope(engine) as s:
        assert tokens.verify(s, data["token"]) is None


def _sign_in(c, token, next_url="/dashboard"):
    page = c.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return c.post("/login", data={"token": token, "csrf_token": csrf, "next": next_url})


def test_sign_in_sets_a_secure_session_cookie(app_client):
    c, t = app_client
    assert c.get("/dashboard").status_code == 401  # the sign-in page, with status 401
    r = _sign_in(c, t.compliance)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "cf_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert t.compliance not in cookie  # a session's random id, never the token
    page = c.get("/dashboard")
    assert page.status_code == 200 and "Consent at a glance" in page.text
    # The cookie reads the API too, but never changes anything through it.
    assert c.get("/api/v1/me").json()["name"] == "carol"
    assert c.post("/api/v1/subjects/alice/consents/news/grant").status_code == 401
    # Sign out (CSRF-checked) ends it.
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert c.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    assert c.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert c.get("/dashboard").status_code == 401


def test_sign_in_refuses_bad_tokens_missing_csrf_and_open_redirects(app_client):
    c, t = app_client
    assert _sign_in(c, "cf_wrong").status_code == 401
    c.get("/login")
    r = c.post("/login", data={"token": t.admin, "csrf_token": "1.forged"})
    assert r.status_code == 403 and "cf_session" not in r.headers.get("set-cookie", "")
    r = _sign_in(c, t.admin, next_url="https://evil.example/")
    assert r.headers["location"] == "/dashboard"
    r = _sign_in(c, t.admin, next_url="//evil.example/")
    assert r.headers["location"] == "/dashboard"
    # A support token may sign in, but the dashboard is for compliance.
    c.cookies.clear()
    _sign_in(c, t.support)
    assert c.get("/dashboard").status_code == 403


def test_a_metrics_token_scrapes_and_reads_no_personal_data(app_client):
    c, t = app_client
    m = bearer(t.metrics)
    scrape = c.get("/metrics", headers=m)
    assert scrape.status_code == 200 and scrape.text.startswith("# HELP consentflow_")
    assert c.get("/api/v1/me", headers=m).json() == {
        "name": "prometheus",
        "scope": "metrics",
        "system": None,
    }
    for path in (
        "/api/v1/subjects/alice",
        "/api/v1/subjects/alice/consents",
        "/api/v1/subjects/alice/history",
        "/api/v1/subjects/alice/receipt",
        "/api/v1/check?subject=alice&purpose=news",
        "/api/v1/feed",
        "/api/v1/requests",
        "/api/v1/audit/export",
        "/api/v1/deliveries",
    ):
        answer = c.get(path, headers=m)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "a metrics token may not do this" in answer.json()["detail"]
    changed = c.post("/api/v1/subjects/alice/consents/news/grant", headers=m)
    assert changed.status_code == 403
    # Signed in at a browser it is no better: the dashboard is for compliance.
    _sign_in(c, t.metrics)
    assert c.get("/dashboard").status_code == 403


def test_tampered_or_made_up_session_cookie_is_refused(app_client, engine):
    c, t = app_client
    _sign_in(c, t.admin)
    value = c.cookies.get(security.SESSION_COOKIE)
    assert c.get("/dashboard").status_code == 200
    for forged in (
        value[:-2] + ("AA" if value[-2:] != "AA" else "BB"),  # tampered
        tokens.hash_token(t.admin),  # what the database holds about the token
        t.admin,  # the token itself is not a session either
        "x" * 5000,
    ):
        c.cookies.set(security.SESSION_COOKIE, forged)
        assert c.get("/dashboard").status_code == 401


def test_cookie_is_secure_when_the_public_url_is_https(app_client, monkeypatch):
    c, t = app_client
    monkeypatch.setenv("CONSENTFLOW_PUBLIC_URL", "https://consent.example.com")
    settings.get_settings.cache_clear()
    try:
        r = _sign_in(c, t.admin)
        assert "Secure" in r.headers["set-cookie"]
    finally:
        monkeypatch.delenv("CONSENTFLOW_PUBLIC_URL")
        settings.get_settings.cache_clear()

"""Security headers on every response (``web.middleware``): Permissions-Policy and
Cross-Origin-Opener-Policy always, Strict-Transport-Security only when the public URL is https,
the pages' CSP and no-store kept, the logo's origin allowed for images when one is configured."""

from __future__ import annotations

import pytest

from consentflow import settings
from tests.support.web import client, seed

PATHS = ("/api/v1/health", "/login", "/link/new", "/l/not-a-token")


@pytest.fixture
def app_with(engine, monkeypatch):
    seed(engine)

    def make(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings.get_settings.cache_clear()
        return client()

    yield make
    settings.get_settings.cache_clear()


def test_every_response_denies_powerful_features_and_isolates_its_window(app_with):
    with app_with(CONSENTFLOW_PUBLIC_URL="http://127.0.0.1:8000") as c:
        for path in PATHS:
            h = c.get(path).headers
            policy = h["permissions-policy"]
            for feature in ("camera", "microphone", "geolocation", "payment", "usb"):
                assert f"{feature}=()" in policy, (path, feature)
            assert h["cross-origin-opener-policy"] == "same-origin"
            assert h["x-content-type-options"] == "nosniff"
            assert h["referrer-policy"] == "no-referrer"
            assert "strict-transport-security" not in h  # plain http: no HSTS


def test_an_https_public_url_adds_hsts_everywhere(app_with):
    with app_with(CONSENTFLOW_PUBLIC_URL="https://consent.example.org") as c:
        for path in PATHS:
            assert c.get(path).headers["strict-transport-security"] == "max-age=31536000"


def test_pages_keep_their_csp_and_the_api_has_none(app_with):
    with app_with() as c:
        page = c.get("/link/new").headers
        assert "default-src 'none'" in page["content-security-policy"]
        assert "img-src 'self' data:;" in page["content-security-policy"]
        assert page["cache-control"] == "no-store"
        assert "content-security-policy" not in c.get("/api/v1/health").headers


def test_a_configured_logo_origin_may_serve_images_and_nothing_else(app_with):
    with app_with(CONSENTFLOW_CONTROLLER_LOGO_URL="https://cdn.acme.example/img/logo.png") as c:
        csp = c.get("/link/new").headers["content-security-policy"]
    assert "img-src 'self' data: https://cdn.acme.example;" in csp
    assert csp.count("acme.example") == 1 and "default-src 'none'" in csp

"""The web templates in the reader's language: ``<html lang>``, the switcher, gettext, dates."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from starlette.requests import Request

from consentflow.web import templating
from tests.support.web import bearer, client, seed


def _request(query: str = "", accept: str | None = None, path: str = "/l/abc") -> Request:
    headers = [(b"accept-language", accept.encode())] if accept is not None else []
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": path,
            "query_string": query.encode(),
            "headers": headers,
        }
    )


def test_locale_for_a_request_and_subject() -> None:
    assert templating.locale_for(_request(accept="de"), "fr") == "fr"  # subject over browser
    assert templating.locale_for(_request(accept="de"), None) == "de"
    assert templating.locale_for(_request("lang=es", "de"), "fr") == "es"  # the switcher
    assert templating.locale_for(_request("lang=xx", "xx"), "xx") == "en"
    request = _request(accept="fr")
    templating.locale_for(request, "de")
    assert request.state.locale == "de"  # kept for the rest of the request
    assert templating.gettext_for(request, "Language") == "Sprache"


def test_switcher_links_keep_the_page_and_its_query() -> None:
    links = templating.language_links(_request("t=abc&lang=fr&x=1"), "fr")
    assert [(k.code, k.url, k.current) for k in links] == [
        ("en", "/l/abc?t=abc&x=1&lang=en", False),
        ("fr", "/l/abc?t=abc&x=1&lang=fr", True),
        ("de", "/l/abc?t=abc&x=1&lang=de", False),
        ("es", "/l/abc?t=abc&x=1&lang=es", False),
    ]


def _render(source: str, **context: object) -> str:
    return templating.templates.env.from_string(source).render(**context)


def test_template_callables_follow_the_render_context() -> None:
    moment = datetime(2026, 3, 14, 9, 5, tzinfo=UTC)
    page = "{{ _('Language') }}|{% trans %}Skip to content{% endtrans %}|{{ when|format_date }}"
    assert _render(page, locale="fr", when=moment) == "Langue|Aller au contenu|14 mars 2026"
    assert _render(page, locale="xx", when=moment) == "Language|Skip to content|March 14, 2026"
    # No explicit locale: the request's (its Accept-Language here).
    assert _render(page, request=_request(accept="es"), when=moment).startswith("Idioma|")
    assert _render("{{ n|format_number }}", locale="de", n=1234.5) == "1.234,5"
    assert _render("{{ t|format_datetime }}", locale="en", t=moment).endswith(" UTC")
    # New-style gettext escapes its variables.
    assert _render("{{ _('%(x)s', x='<b>') }}", locale="fr") == "&lt;b&gt;"


def test_concurrent_renders_in_different_languages_do_not_mix() -> None:
    template = templating.templates.env.from_string("{{ _('Language') }}")
    expected = {"fr": "Langue", "de": "Sprache", "es": "Idioma", "en": "Language"}
    wrong: list[str] = []
    barrier = threading.Barrier(4)

    def worker(lang: str) -> None:
        barrier.wait()
        for _ in range(300):
            got = template.render(locale=lang)
            if got != expected[lang]:
                wrong.append(f"{lang}: {got}")

    threads = [threading.Thread(target=worker, args=(lang,)) for lang in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize(
    ("query", "accept", "lang", "skip"),
    [
        ("", "de-DE,de;q=0.9,en;q=0.5", "de", "Zum Inhalt springen"),
        ("?lang=fr", "de", "fr", "Aller au contenu"),
        ("?lang=xx", "xx", "en", "Skip to content"),
    ],
)
def test_pages_are_in_the_negotiated_language(
    engine: Engine, query: str, accept: str, lang: str, skip: str
) -> None:
    with client() as c:
        page = c.get(f"/login{query}", headers={"Accept-Language": accept}).text
    assert f'<html lang="{lang}">' in page
    assert skip in page
    nav = re.search(r'<nav class="languages" aria-label="([^"]+)">(.*?)</nav>', page, re.S)
    assert nav is not None
    current = re.findall(r'hreflang="(\w+)"\s*aria-current="true"', nav.group(2))
    assert current == [lang]
    assert re.findall(r'href="/login\?lang=(\w+)"', nav.group(2)) == ["en", "fr", "de", "es"]


def test_error_pages_are_in_the_readers_language(engine: Engine) -> None:
    with client() as c:
        page = c.get("/l/not-a-token", headers={"Accept-Language": "es"}).text
    assert '<html lang="es">' in page and "Ir al contenido" in page


def test_purpose_texts_through_the_api(engine: Engine) -> None:
    tokens = seed(engine)
    h = bearer(tokens.admin)
    with client() as c:
        r = c.post(
            "/api/v1/purposes",
            headers=h,
            json={
                "key": "sms",
                "title": "Texts",
                "validity_days": 90,
                "texts": {"fr": {"title": "SMS", "description": "Par texto."}},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["notice"]["texts"] == {"fr": {"title": "SMS", "description": "Par texto."}}
        r = c.post(
            "/api/v1/purposes/sms/versions",
            headers=h,
            json={"material": False, "texts": {"de": {"title": "Kurznachrichten"}}},
        )
        assert r.status_code == 201, r.text
        versions = r.json()["versions"]
        assert [sorted(v["texts"]) for v in versions] == [["fr"], ["de", "fr"]]
        for bad, phrase in [
            ({"en": {"title": "X"}}, "default language"),
            ({"fr": {}}, "give a title or a description"),
            ({"f r": {"title": "X"}}, "texts"),
            ({"fr": {"title": "X", "extra": 1}}, "extra"),
        ]:
            r = c.post(
                "/api/v1/purposes/sms/versions", headers=h, json={"material": False, "texts": bad}
            )
            assert r.status_code == 422 and phrase in r.text, (bad, r.text)
        assert c.get("/api/v1/purposes/sms", headers=h).json()["current_version"] == 2
        systems = c.get("/api/v1/systems", headers=bearer(tokens.compliance)).json()
        assert [(s["name"], s["display_name"]) for s in systems] == [
            ("billing", "billing"),
            ("crm", "crm"),
        ]

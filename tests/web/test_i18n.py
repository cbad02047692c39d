"""The web templates in the reader's language: ``<html lang>``, the switcher, gettext, dates."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from starlette.requests import Request

from consentflow import db, i18n, lifecycle, links, purposes, settings
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
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


# ------------------------------------------------------- the people's pages, language by language


def _subject(engine: Engine, external_id: str, locale: str | None) -> None:
    """A subject with exactly this ``locale`` (None: none stored; written directly, because
    ``subjects.add`` stores "en" for a subject registered without one)."""
    from sqlmodel import update

    from consentflow import subjects
    from consentflow.models import Subject

    with db.session_scope(engine) as s:
        subjects.add(s, external_id, locale=locale or "en")
        if locale is None:
            s.exec(update(Subject).where(Subject.external_id == external_id).values(locale=None))


def _link(engine: Engine, action: LinkAction, subject: str, purpose: str | None = None) -> str:
    from sqlmodel import select

    from consentflow.models import Purpose, Subject

    with db.session_scope(engine) as s:
        sid = s.exec(select(Subject.id).where(Subject.external_id == subject)).one()
        pid = s.exec(select(Purpose.id).where(Purpose.key == purpose)).one() if purpose else None
        return f"/l/{links.issue(s, action, sid, pid)}"


def _main(html: str) -> str:
    """The visible words of the page's main part (tags dropped)."""
    body = html[html.index('<main id="main"') : html.index("</main>")]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


ENGLISH = re.compile(
    r"\b(January|February|March|April|May|June|July|August|September|October|November|December"
    r"|You said|Withdraw|Yes, I agree|No, thanks|Your choices|Valid until)\b"
)


def test_a_french_subject_reads_french_pages(engine: Engine) -> None:
    seed(engine)
    _subject(engine, "zoe", "fr")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "zoe", "news", Actor())
    prefs, grant = (
        _link(engine, LinkAction.PREFERENCES, "zoe"),
        _link(engine, LinkAction.GRANT, "zoe", "invoices"),
    )
    with client() as c:
        page = c.get(prefs, headers={"Accept-Language": "de"}).text  # the subject's wins
        ask = c.get(grant, headers={"Accept-Language": "de"}).text
    today = i18n.format_date(datetime.now(UTC), "fr")
    assert '<html lang="fr">' in page and '<html lang="fr">' in ask
    words = _main(page)
    assert "Vos choix" in words and f"Vous avez dit oui le {today}" in words
    assert "Non, merci" in words and "Tout retirer" in words and "Votre historique" in words
    # The history row: date, purpose, what, how (the grant came through the API).
    row = f"{today} Monthly newsletter Vous avez dit oui Par notre site web ou notre application"
    assert row in words
    assert ENGLISH.search(words) is None, ENGLISH.search(words)
    asked = _main(ask)
    apostrophe = "\u2019"  # French typography
    assert f"Êtes-vous d{apostrophe}accord" in asked and f"Oui, j{apostrophe}accepte" in asked
    assert "Non, merci" in asked
    assert ENGLISH.search(asked) is None, ENGLISH.search(asked)
    # The purpose has no French text: its English title is marked as English.
    assert '<strong class="purpose-title" lang="en">Invoices by email</strong>' in ask


def test_a_subject_without_a_locale_gets_the_browsers_language(engine: Engine) -> None:
    seed(engine)
    _subject(engine, "udo", None)
    url = _link(engine, LinkAction.GRANT, "udo", "news")
    with client() as c:
        page = c.get(url, headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}).text
        plain = c.get(url).text
    assert '<html lang="de">' in page
    assert "Sind Sie einverstanden?" in page and "Ja, ich stimme zu" in page
    assert "Nein, danke" in page and "Nicht erteilt" in page
    assert '<html lang="en">' in plain and "Do you agree?" in plain


@pytest.mark.parametrize("locale", ["xx", "zz-QQ", "tlh"])
def test_an_unknown_locale_falls_back_to_english(engine: Engine, locale: str) -> None:
    seed(engine)
    _subject(engine, "kim", locale)
    with client() as c:
        for url in (
            _link(engine, LinkAction.PREFERENCES, "kim"),
            _link(engine, LinkAction.GRANT, "kim", "news"),
        ):
            r = c.get(url, headers={"Accept-Language": locale})
            assert r.status_code == 200
            assert '<html lang="en">' in r.text and "No, thanks" in r.text


def test_purpose_texts_in_the_page_language_with_lang_on_fallbacks(engine: Engine) -> None:
    seed(engine)
    _subject(engine, "zoe", "fr-CA")
    with db.session_scope(engine) as s:
        purposes.revise(
            s,
            "news",
            material=False,
            texts={"fr": {"title": "Lettre mensuelle"}, "fr-ca": {"description": "Par courriel."}},
        )
    url = _link(engine, LinkAction.GRANT, "zoe", "news")
    with client() as c:
        french = c.get(url).text
        spanish = c.get(f"{url}?lang=es").text
    assert '<strong class="purpose-title">Lettre mensuelle</strong>' in french
    assert '<dd lang="fr-ca">Par courriel.</dd>' in french  # the subject's regional text
    assert '<strong class="purpose-title" lang="en">Monthly newsletter</strong>' in spanish


def test_the_language_chosen_on_the_page_survives_the_post(engine: Engine) -> None:
    seed(engine)
    _subject(engine, "zoe", "fr")
    url = _link(engine, LinkAction.GRANT, "zoe", "news")
    with client() as c:
        page = c.get(f"{url}?lang=es").text
        assert '<html lang="es">' in page
        assert f'action="{url}?lang=es"' in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = c.post(f"{url}?lang=es", data={"csrf_token": csrf, "answer": "no"})
        assert r.status_code == 303 and r.headers["location"].endswith("&lang=es")
        result = c.get(r.headers["location"]).text
        # Without the switcher's choice the subject's language is back.
        r = c.post(url, data={"csrf_token": csrf, "answer": "no"})
        assert "lang=" not in r.headers["location"]
        again = c.get(r.headers["location"]).text
    assert '<html lang="es">' in result and "Usted dijo que no" in result
    assert '<html lang="fr">' in again and "Déjà enregistré" in again


def test_bad_links_and_problems_in_the_readers_language(engine: Engine) -> None:
    seed(engine)
    _subject(engine, "zoe", "fr")
    with client() as c:
        broken = c.get("/l/not-a-token?lang=de")
        assert broken.status_code == 400 and "Dieser Link funktioniert nicht" in broken.text
        assert 'href="/link/new?lang=de"' in broken.text
        url = _link(engine, LinkAction.GRANT, "zoe", "news")
        page = c.get(url).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = c.post(url, data={"csrf_token": csrf})  # neither yes nor no
        assert r.status_code == 422 and "Choisissez oui ou non." in r.text


def test_the_controller_footer_follows_the_settings(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine)
    _subject(engine, "zoe", "de")
    url = _link(engine, LinkAction.PREFERENCES, "zoe")
    with client() as c:
        for name in ("Bäckerei Acme GmbH", "Acme <Holding> AG"):
            monkeypatch.setenv("CONSENTFLOW_CONTROLLER_NAME", name)
            settings.get_settings.cache_clear()
            html = c.get(url).text
            escaped = name.replace("<", "&lt;").replace(">", "&gt;")
            strong = f'<strong class="controller-name">{escaped}</strong>'
            assert f"Verantwortlich für Ihre Daten ist {strong}" in html
            assert f"<title>Ihre Entscheidungen · {escaped}</title>" in html
    settings.get_settings.cache_clear()

"""Emails in the recipient's language, under the controller's name (issue 9, items 2 and 3).

The email catalog (gettext domain ``email``) is complete in French, German and Spanish and its
``.mo`` files are compiled from the current ``.po``; every kind renders in every supported
language with Babel dates, plural forms and ``<html lang>``; an unsupported locale is English;
the controller's identity is in every footer (read from the settings at each render); and,
through the real sweeps over a real SMTP server on loopback (aiosmtpd), a French subject gets a
French renewal reminder with the French purpose title, a German subject a German one, a
Portuguese one English, each parsing with ``email.policy.strict`` (``sinks.check_wire``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import select

from consentflow import db, i18n, lifecycle, links, mail, purposes, settings, subjects, sweeps
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.mail import Mailer, SmtpConfig
from consentflow.models import Consent, ConsentRequest, utcnow
from tests.mail.sinks import RawSink, check_wire
from tests.support.seeding import give
from tests.support.smtp import use_smtp

TRANSLATED = ("fr", "de", "es")
DAY = timedelta(days=1)
PLACEHOLDER = re.compile(r"%\(\w+\)s")
WHEN = datetime(2030, 1, 31, 12, tzinfo=UTC)
CONTEXT: dict[str, Any] = {
    "purpose_title": "News & <offers>",
    "valid_until": WHEN,
    "days_left": 7,
    "requested_on": WHEN,
    "deadline": WHEN,
    "expires_on": WHEN,
    "last": True,
    "renew_url": "https://consent.example.org/l/renew",
    "revoke_url": "https://consent.example.org/l/revoke",
    "grant_url": "https://consent.example.org/l/grant",
    "preferences_url": "https://consent.example.org/l/prefs",
    "withdraw_all_url": "https://consent.example.org/l/all",
}
CONTROLLER = {
    "NAME": "Boulangerie Dupont SA",
    "PRIVACY_URL": "https://dupont.example/vie-privee",
    "CONTACT": "privacy@dupont.example",
    "ADDRESS": "1 rue du Four, 75006 Paris",
    "DPO": "dpo@dupont.example",
    "LOGO_URL": "https://dupont.example/logo.png",
}
#: The footer line naming the controller, per language (as the catalog translates it).
ON_BEHALF = {
    "en": "Sent on behalf of {}, who is responsible for your data.",
    "fr": "Envoyé pour le compte de {}, responsable du traitement de vos données.",
    "de": "Gesendet im Auftrag von {}, verantwortlich für Ihre Daten.",
    "es": "Enviado en nombre de {}, responsable del tratamiento de sus datos.",
}


def flat(text: str) -> str:
    """Whitespace collapsed: the text part is wrapped at 76 columns."""
    return " ".join(text.split())


@pytest.fixture
def controller(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for field, value in CONTROLLER.items():
        monkeypatch.setenv(f"CONSENTFLOW_CONTROLLER_{field}", value)
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


# ------------------------------------------------------------------------------- the catalog


def _po(lang: str) -> Path:
    return i18n.locale_dir() / lang / "LC_MESSAGES" / f"{i18n.EMAIL_DOMAIN}.po"


def _read_po(path: Path) -> Catalog:
    with path.open("rb") as fh:
        return read_po(fh)


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def test_email_catalogs_are_complete_and_compiled() -> None:
    """Every message of email.pot is translated (every plural form, nothing fuzzy, the same
    placeholders) in fr, de and es, and each committed .mo holds exactly its .po."""
    template = {m.id for m in _read_po(i18n.locale_dir() / "email.pot") if m.id}
    assert len(template) > 20
    for lang in TRANSLATED:
        po = _read_po(_po(lang))
        found = {m.id: m for m in po if m.id}
        assert set(found) == template, (
            f"{lang}: run `python -m consentflow.i18n --domain email update`"
        )
        for msgid, message in found.items():
            assert not message.fuzzy, (lang, msgid)
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            ids = msgid if isinstance(msgid, tuple) else (msgid,)
            assert len(strings) == (po.num_plurals if isinstance(msgid, tuple) else 1)
            for string in strings:
                assert string and string.strip(), (lang, msgid)
                assert set(PLACEHOLDER.findall(string)) == set(PLACEHOLDER.findall(ids[-1]))
        with _po(lang).with_suffix(".mo").open("rb") as fh:
            mo = {_key(m.id): _key(m.string) for m in read_mo(fh) if m.id}
        assert mo == {k: _key(m.string) for k, m in found.items()}, (
            f"{lang}: the .mo is stale: run `python -m consentflow.i18n --domain email compile`"
        )


def test_the_email_template_is_up_to_date_with_the_email_templates(tmp_path: Path) -> None:
    out = tmp_path / "email.pot"
    i18n.extract(out, i18n.EMAIL_DOMAIN)
    fresh = {m.id for m in _read_po(out) if m.id}
    committed = {m.id for m in _read_po(i18n.locale_dir() / "email.pot") if m.id}
    assert fresh == committed, "run `python -m consentflow.i18n --domain email extract`, `update`"
    web = {m.id for m in _read_po(i18n.locale_dir() / "messages.pot") if m.id}
    assert not {m for m in fresh if isinstance(m, str) and "%(" in m} & web  # two domains


# ------------------------------------------------------------------------------- rendering


def _english_literals() -> set[str]:
    """The English text of every email message (its words between placeholders)."""
    found: set[str] = set()
    for message in _read_po(i18n.locale_dir() / "email.pot"):
        for msgid in message.id if isinstance(message.id, tuple) else (message.id,):
            found.update(p.strip() for p in PLACEHOLDER.split(msgid or "") if len(p.strip()) > 8)
    return found


@pytest.mark.parametrize("lang", i18n.SUPPORTED)
def test_every_kind_renders_in_each_language(lang: str) -> None:
    english = _english_literals()
    date = i18n.format_date(WHEN, lang)
    for kind in mail.Kind:
        r = mail.render(kind, lang, CONTEXT)
        assert r.locale == lang and f'<html lang="{lang}">' in r.html
        assert date in r.subject or kind is not mail.Kind.RENEWAL_REMINDER
        assert date in flat(r.text) and date in flat(r.html)
        if lang != "en":
            leftovers = {e for e in english if e in flat(r.text) or e in flat(r.html)}
            assert not leftovers, (kind, leftovers)
            assert i18n.format_date(WHEN, "en") not in r.text + r.html + r.subject
        assert all(
            len(line) <= mail.rendering.TEXT_WIDTH or " " not in line
            for line in r.text.splitlines()
        )


def test_dates_and_plurals_follow_the_language() -> None:
    def when(lang: str, days: int) -> str:
        return flat(
            mail.render(mail.Kind.RENEWAL_REMINDER, lang, {**CONTEXT, "days_left": days}).text
        )

    assert "31 janvier 2030 (dans 1 jour)" in when("fr", 1)
    assert "(dans 7 jours)" in when("fr", 7)
    assert "31. Januar 2030 (in 1 Tag)" in when("de", 1) and "(in 7 Tagen)" in when("de", 7)
    assert "31 de enero de 2030 (dentro de 1 día)" in when("es", 1)
    assert "January 31, 2030 (1 day from now)" in when("en", 1)
    assert "(2 days from now)" in when("en", 2)
    # A caller that formatted a date itself keeps its text.
    kept = mail.render(mail.Kind.RENEWAL_REMINDER, "fr", {**CONTEXT, "valid_until": "bientôt"})
    assert "prend fin le bientôt" in kept.subject


@pytest.mark.parametrize("locale", ["pt", "pt-BR", "zz", "", "not a tag!", None])
def test_an_unsupported_locale_is_english(locale: str | None) -> None:
    r = mail.render(mail.Kind.COLLECTION_FOLLOWUP, locale, CONTEXT)
    assert r.locale == "en" and '<html lang="en">' in r.html
    assert r.subject == 'Reminder: may we use your data for "News & <offers>"?'
    assert r.text.startswith("Hello,\n")


@pytest.mark.usefixtures("controller")
@pytest.mark.parametrize("lang", i18n.SUPPORTED)
def test_the_controller_is_in_every_footer(lang: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in mail.Kind:
        r = mail.render(kind, lang, CONTEXT)
        text, html = flat(r.text), flat(r.html)
        assert ON_BEHALF[lang].format("Boulangerie Dupont SA") in text
        assert ON_BEHALF[lang].format("<strong>Boulangerie Dupont SA</strong>") in html
        for value in ("https://dupont.example/vie-privee", "privacy@dupont.example"):
            assert value in text and value in html
        assert "dpo@dupont.example" in text and 'href="mailto:dpo@dupont.example"' in html
        assert "1 rue du Four, 75006 Paris" in text and "1 rue du Four, 75006 Paris" in html
        assert '<img src="https://dupont.example/logo.png" alt="Boulangerie Dupont SA"' in html
    # Read at each render: a changed setting shows in the next message.
    monkeypatch.setenv("CONSENTFLOW_CONTROLLER_NAME", "Dupont & Fils")
    monkeypatch.delenv("CONSENTFLOW_CONTROLLER_DPO")
    settings.get_settings.cache_clear()
    r = mail.render(mail.Kind.RECONSENT_REQUEST, lang, CONTEXT)
    assert ON_BEHALF[lang].format("Dupont & Fils") in flat(r.text)
    assert ON_BEHALF[lang].format("<strong>Dupont &amp; Fils</strong>") in flat(r.html)
    assert "dpo@dupont.example" not in r.text + r.html


def test_withdraw_everything_is_offered_in_every_sweep_email() -> None:
    for kind in (
        mail.Kind.RENEWAL_REMINDER,
        mail.Kind.COLLECTION_FOLLOWUP,
        mail.Kind.RECONSENT_REQUEST,
    ):
        for lang, label in (("en", "Withdraw everything"), ("fr", "Tout retirer")):
            r = mail.render(kind, lang, CONTEXT)
            assert f"{label}: https://consent.example.org/l/all" in r.text.replace(" :", ":")
            assert (
                f'<a href="https://consent.example.org/l/all" style="color:#1d4ed8">{label}</a>'
                in r.html
            )


def test_text_is_wrapped_without_breaking_urls_or_french_spacing() -> None:
    url = "https://consent.example.org/l/" + "x" * 120
    line = (
        "Pour le conserver, renouvelez-le ici : « un titre assez long pour passer la ligne » ? " * 3
    )
    wrapped = mail.rendering.wrap_text(f"{line}\n\n\n\n{url}\n")
    lines = wrapped.splitlines()
    assert url in lines and wrapped.endswith(f"\n\n{url}\n")
    assert all(not re.match(r"[:;?!»]", x) and not x.endswith("«") for x in lines)
    assert all(len(x) <= 76 for x in lines if x != url)
    assert flat(wrapped) == flat(line + url)


# --------------------------------------------------------------- through the sweeps, over SMTP

TITLES = {"fr": "Lettre mensuelle", "de": "Monatlicher Newsletter"}
PEOPLE = {"fr": "fr-CA", "de": "de", "pt": "pt"}  # subject ref -> stored locale


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, controller: None) -> Iterator[RawSink]:
    with RawSink(smtputf8=False) as sink:
        use_smtp(monkeypatch, sink.port)
        yield sink
    settings.get_settings.cache_clear()


@pytest.fixture
def people(engine: Engine) -> dict[str, int]:
    """A French (fr-CA), a German and a Portuguese subject with a "news" consent ending in 5
    days; the purpose has French and German titles, none in Portuguese."""
    texts = {lang: {"title": title} for lang, title in TITLES.items()}
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly newsletter", validity_days=365, texts=texts)
        ids = {
            ref: subjects.add(s, ref, email=f"{ref}@example.com", locale=locale).id
            for ref, locale in PEOPLE.items()
        }
    give(engine, list(ids.values()), "news", utcnow() + 5 * DAY + DAY / 2)
    return ids  # type: ignore[return-value]


def _run(sweep: Any, engine: Engine, port: int, as_of: datetime, **kw: Any) -> None:
    with Mailer(SmtpConfig(host="127.0.0.1", port=port, timeout=5, pool_size=1)) as mailer:
        ctx = sweeps.SweepContext(as_of, mailer=mailer, engine=engine, **kw)
        for _ in sweeps.drain(lambda size, cursor: sweep(ctx, size, cursor), batch_size=50):
            pass


def _received(sink: RawSink, ref: str) -> list[tuple[EmailMessage, str, str]]:
    """Each message to ``ref``: parsed strictly, with its plain text and HTML (flattened)."""
    out = []
    for wire in sink.to(f"{ref}@example.com"):
        msg = check_wire(wire.raw, utf8=False)
        plain, html = (msg.get_body(preferencelist=(t,)) for t in ("plain", "html"))
        assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
        out.append((msg, flat(plain.get_content()), flat(html.get_content())))
    return out


def _valid_until(engine: Engine) -> datetime:
    with db.session_scope(engine) as s:
        (end,) = set(s.exec(select(Consent.valid_until)).all())
    assert end is not None
    return end


def test_each_person_gets_the_renewal_reminder_in_their_language(
    engine: Engine, people: dict[str, int], server: RawSink
) -> None:
    _run(sweeps.remind_batch, engine, server.port, utcnow(), stages=(7,))
    end = _valid_until(engine)
    expected = {
        "fr": (
            "Votre consentement « Lettre mensuelle » prend fin le",
            "Bonjour,",
            "(dans 6 jours)",
        ),
        "de": (
            "Ihre Einwilligung für „Monatlicher Newsletter“ endet am",
            "Guten Tag,",
            "(in 6 Tagen)",
        ),
        "pt": ('Your consent for "Monthly newsletter" ends on', "Hello,", "(6 days from now)"),
    }
    for ref, (subject, hello, when) in expected.items():
        lang = i18n.supported(PEOPLE[ref]) or "en"
        [(msg, text, html)] = _received(server, ref)
        date = i18n.format_date(end, lang)
        assert flat(msg["Subject"]) == f"{subject} {date}"
        assert msg["Content-Language"] == lang and f'<html lang="{lang}">' in html
        assert text.startswith(hello) and date in text and when in text
        assert ON_BEHALF[lang].format(CONTROLLER["NAME"]) in text
        assert ON_BEHALF[lang].format(f"<strong>{CONTROLLER['NAME']}</strong>") in html
        assert CONTROLLER["PRIVACY_URL"] in text and CONTROLLER["PRIVACY_URL"] in html
        if lang != "en":
            assert TITLES[lang] in text and "Monthly newsletter" not in text + html
            assert i18n.format_date(end, "en") not in text + html
        _check_withdraw_everything(engine, text, people[ref])


def _check_withdraw_everything(engine: Engine, text: str, subject_id: int) -> None:
    """The last link before the footer withdraws every purpose (a revoke link without one)."""
    found = re.search(r"(?:Withdraw everything|Tout retirer|Alles widerrufen) ?: (\S+)", text)
    assert found is not None, text
    with db.session_scope(engine) as s:
        link = links.verify(s, found.group(1).rsplit("/", 1)[1], LinkAction.REVOKE)
    assert (link.subject_id, link.purpose_id) == (subject_id, None)


def test_follow_ups_and_re_consent_requests_show_the_purpose_in_the_subject_s_language(
    engine: Engine, people: dict[str, int], server: RawSink
) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "ads", title="Ads", validity_days=30, texts={"fr": {"title": "Publicité"}})
        for ref in PEOPLE:
            lifecycle.request(s, ref, "ads", Actor())
        s.exec(update(ConsentRequest).values(requested_at=utcnow() - 8 * DAY))
        purposes.revise(
            s,
            "news",
            material=True,
            title="Monthly letter",
            texts={"fr": {"title": "Lettre du mois"}},
        )
    _run(
        sweeps.followup_batch, engine, server.port, utcnow(), followup_after_days=7, followup_max=2
    )
    _run(sweeps.reconsent_open_batch, engine, server.port, utcnow(), reconsent_deadline_days=30)
    with db.session_scope(engine) as s:
        asked = {
            r.kind: r
            for r in s.exec(select(ConsentRequest).where(ConsentRequest.subject_id == people["fr"]))
        }
    deadline, requested = asked["reconsent"].deadline, asked["collection"].requested_at
    assert deadline is not None
    [(follow, text, _), (reconsent, retext, _)] = _received(server, "fr")
    assert (
        flat(follow["Subject"]) == "Rappel : pouvons-nous utiliser vos données pour « Publicité » ?"
    )
    assert f"Le {i18n.format_date(requested, 'fr')}, nous vous avons demandé" in text
    assert flat(reconsent["Subject"]) == (
        "« Lettre du mois » a changé : merci de confirmer votre consentement avant le "
        + i18n.format_date(deadline, "fr")
    )
    assert "Envoyé pour le compte de Boulangerie Dupont SA" in retext
    _check_withdraw_everything(engine, retext, people["fr"])
    # The German subject has no German text for these: the default titles, German words.
    [(follow_de, _, _), (reconsent_de, _, _)] = _received(server, "de")
    assert flat(follow_de["Subject"]) == "Erinnerung: Dürfen wir Ihre Daten für „Ads“ verwenden?"
    assert flat(reconsent_de["Subject"]).startswith("Wir haben „Monthly letter“ geändert")

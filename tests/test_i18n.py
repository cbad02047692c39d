"""consentflow.i18n: choosing the language, the catalogs, dates and numbers in that language."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from consentflow import i18n

LOCALES = i18n.locale_dir()
TRANSLATED = [lang for lang in i18n.SUPPORTED if lang != i18n.DEFAULT]


@pytest.mark.parametrize(
    ("subject", "accept", "requested", "expected"),
    [
        ("fr", "de", None, "fr"),  # the subject's locale wins over the browser's
        (None, "de", None, "de"),  # a subject without a locale: the browser decides
        ("fr-CA", "de", None, "fr"),  # a regional tag counts as its language
        ("fr", "de", "es", "es"),  # the switcher's choice wins over both
        ("fr", None, "ES", "es"),
        ("xx", "de-AT, en;q=0.5", None, "de"),  # unknown subject locale: fall through
        (None, "xx", None, "en"),  # unknown everywhere: English, never an error
        (None, "xx-YY, zz;q=0.9", "qq", "en"),
        (None, None, None, "en"),
        (None, "", "", "en"),
        (None, "en;q=0.5, es;q=0.9", None, "es"),  # q-values, not the order, decide
        (None, "de;q=0, fr;q=0.1", None, "fr"),  # q=0 means "not this"
        (None, "*, fr;q=0.5", None, "fr"),  # the wildcard names no language
        (None, "de;q=2, es;q=abc, fr;q=0.3", None, "fr"),  # malformed weights are dropped
        ("not a tag!", "garbage;;;,", "../../etc", "en"),
    ],
)
def test_negotiate(
    subject: str | None, accept: str | None, requested: str | None, expected: str
) -> None:
    assert i18n.negotiate(subject, accept, requested) == expected


def test_accept_language_is_ordered_by_weight_then_position() -> None:
    header = "fr-CH, fr;q=0.9, en;q=0.8, de;q=0.9, *;q=0.5, it;q=0, x;q=1"
    assert i18n.parse_accept_language(header) == ["fr-ch", "fr", "de", "en"]


def test_fallback_chain() -> None:
    assert i18n.fallback_chain("de_AT") == ["de-at", "de"]
    assert i18n.fallback_chain("zh-Hant-TW") == ["zh-hant-tw", "zh-hant", "zh"]
    assert i18n.fallback_chain("!!") == [] and i18n.fallback_chain(None) == []


# ---------------------------------------------------------------------------------- catalogs


def _po(lang: str) -> Path:
    return LOCALES / lang / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"


def _key(value: str | tuple[str, ...] | list[str]) -> str | tuple[str, ...]:
    """A message id or string as one comparable value (plural forms as a tuple)."""
    return value if isinstance(value, str) else tuple(value)


def _translated(string: str | tuple[str, ...] | list[str]) -> bool:
    """Every form is non-empty (a plural message has one string per plural form)."""
    return bool(string) if isinstance(string, str) else bool(string) and all(string)


def test_catalogs_are_complete_and_compiled() -> None:
    """Every .po translates every message of the .pot (each plural form too), nothing fuzzy,
    and its committed .mo says exactly the same (run ``python -m consentflow.i18n compile``
    after editing a .po)."""
    with (LOCALES / f"{i18n.DOMAIN}.pot").open("rb") as fh:
        template = {_key(m.id) for m in read_po(fh) if m.id}
    assert template, "the .pot is empty"
    assert any(isinstance(key, tuple) for key in template), "no plural message: pluralize counts"
    for lang in TRANSLATED:
        with _po(lang).open("rb") as fh:
            po = read_po(fh)
        messages = {_key(m.id): _key(m.string) for m in po if m.id}
        assert set(messages) == template, f"{lang}: run `python -m consentflow.i18n update`"
        missing = [m.id for m in po if m.id and (not _translated(m.string) or m.fuzzy)]
        assert missing == [], f"{lang}: untranslated or fuzzy: {missing}"
        # Babel's checkers: the same %(placeholders)s in each translation as in its message.
        problems = [(m.id, [str(e) for e in errors]) for m, errors in po.check()]
        assert problems == [], f"{lang}: {problems}"
        plurals = [m for m in po if m.id and isinstance(m.id, tuple)]
        assert all(len(m.string) == po.num_plurals for m in plurals), f"{lang}: plural forms"
        with _po(lang).with_suffix(".mo").open("rb") as fh:
            mo = {_key(m.id): _key(m.string) for m in read_mo(fh) if m.id}
        assert mo == messages, f"{lang}: the .mo is stale: run `python -m consentflow.i18n compile`"


def test_the_template_is_up_to_date_with_the_sources(tmp_path: Path) -> None:
    """A fresh extraction from templates/ and src/ finds exactly the .pot's messages."""
    out = tmp_path / "fresh.pot"
    i18n.extract(out)
    with out.open("rb") as fh:
        fresh = {m.id for m in read_po(fh) if m.id}
    with (LOCALES / f"{i18n.DOMAIN}.pot").open("rb") as fh:
        committed = {m.id for m in read_po(fh) if m.id}
    assert fresh == committed, "run `python -m consentflow.i18n extract` then `update`"


def test_translations_load_with_english_fallback() -> None:
    assert i18n.gettext("fr", "Language") == "Langue"
    assert i18n.gettext("de-AT", "Language") == "Sprache"
    assert i18n.gettext("es", "Skip to content") == "Ir al contenido"
    for other in ("en", "xx", None, "not a tag!"):
        assert i18n.gettext(other, "Language") == "Language"
    assert i18n.gettext("fr", "no such message") == "no such message"


# ----------------------------------------------------------------------- dates and numbers


def test_dates_and_numbers_in_each_language() -> None:
    moment = datetime(2026, 3, 14, 9, 5, tzinfo=UTC)
    assert [i18n.format_date(moment, lang) for lang in i18n.SUPPORTED] == [
        "March 14, 2026",
        "14 mars 2026",
        "14. März 2026",
        "14 de marzo de 2026",
    ]
    assert i18n.format_date(date(2026, 3, 14), "xx") == "March 14, 2026"
    assert i18n.format_datetime(moment, "fr") == "14 mars 2026, 09:05:00 UTC"
    assert i18n.format_datetime(moment, "de", "short") == "14.03.26, 09:05 UTC"
    assert [i18n.format_number(1234.5, lang) for lang in i18n.SUPPORTED] == [
        "1,234.5",
        "1\u202f234,5",
        "1.234,5",
        "1.234,5",
    ]
    assert i18n.format_date(None, "fr") == "" and i18n.format_datetime(None, "fr") == ""


def test_dates_are_taken_in_utc() -> None:
    # 23:30 on the 14th in UTC-5 is the 15th in UTC.
    late = datetime(2026, 3, 14, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert i18n.format_date(late, "en") == "March 15, 2026"
    assert i18n.format_datetime(late, "en", "short") == "3/15/26, 4:30\u202fAM UTC"
    with pytest.raises(ValueError, match="naive"):
        i18n.format_datetime(datetime(2026, 3, 14), "en")

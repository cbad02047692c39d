"""The language of a page or message, its gettext catalog, and dates and numbers in that language.

Supported languages: ``SUPPORTED`` (English, the default, then French, German, Spanish). The
catalogs are gettext ``.po`` files compiled to ``.mo`` under ``templates/locale/<lang>/LC_MESSAGES``
(installed as ``consentflow.templates``), extracted with Babel from the templates and the Python
sources (``templates/babel.cfg``). Message ids are the English text, so English needs no catalog.

Choosing the language (``negotiate``), first match wins:

1. the language the person picked on the page's switcher (the ``?lang=xx`` query parameter:
   read on GET and POST alike, never stored, so choosing a language changes nothing recorded);
2. the subject's ``locale`` (``fr-CA`` counts as ``fr``);
3. the browser's ``Accept-Language``, in the order of its q-values (``q=0`` means "not this");
4. English.

Failure modes: none on purpose. An unknown, malformed or unsupported tag anywhere in the chain is
skipped, never an error; a missing catalog gives the English text (``translations``).

Rebuilding the catalogs (after changing a translatable string; documented in the README)::

    python -m consentflow.i18n extract   # templates + src -> templates/locale/messages.pot
    python -m consentflow.i18n update    # merge the .pot into every <lang>/messages.po
    # ... translate the new or fuzzy entries in the .po files ...
    python -m consentflow.i18n compile   # .po -> .mo (both are committed; a test compares them)

Adding a language: add its tag to ``SUPPORTED`` and ``NAMES``, run ``python -m consentflow.i18n
init xx``, translate ``templates/locale/xx/LC_MESSAGES/messages.po``, then ``compile``.

Domains: ``messages`` (``DOMAIN``) holds the web pages and the Python sources; ``email``
(``EMAIL_DOMAIN``) the email templates (``templates/email``, mapped by
``templates/babel-email.cfg``), in ``<lang>/LC_MESSAGES/email.{po,mo}`` and ``email.pot``.
``translations(locale, domain)`` loads either; every maintenance step above takes
``--domain email`` first (``python -m consentflow.i18n --domain email extract``, ...).
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from babel.core import negotiate_locale
from babel.dates import format_date as _babel_date
from babel.dates import format_datetime as _babel_datetime
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

DEFAULT = "en"
#: The languages with complete catalogs, the default first.
SUPPORTED: tuple[str, ...] = ("en", "fr", "de", "es")
#: Each language's own name, for the switcher (a person finds their language by its own name).
NAMES: dict[str, str] = {"en": "English", "fr": "Français", "de": "Deutsch", "es": "Español"}
#: The query parameter of the page's language switcher.
QUERY_PARAM = "lang"
DOMAIN = "messages"
#: The catalog domain of the email templates.
EMAIL_DOMAIN = "email"
#: Each domain's extraction map (in ``templates/``) and whether the Python sources are scanned.
_DOMAINS: dict[str, tuple[str, bool]] = {
    DOMAIN: ("babel.cfg", True),
    EMAIL_DOMAIN: ("babel-email.cfg", False),
}

_TAG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")
_Q = re.compile(r"^\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*$", re.IGNORECASE)


def locale_dir() -> Path:
    """Where the catalogs live: ``<lang>/LC_MESSAGES/messages.{po,mo}`` and ``messages.pot``."""
    return Path(str(files("consentflow.templates").joinpath("locale")))


def normalise_tag(tag: str | None) -> str | None:
    """A tag as stored and compared (``fr_CA`` -> ``fr-ca``); None if malformed."""
    if not tag or not _TAG.match(tag.strip()):
        return None
    return tag.strip().replace("_", "-").lower()


def supported(tag: str | None) -> str | None:
    """The supported language ``tag`` means (``fr-CA`` -> ``fr``), or None."""
    norm = normalise_tag(tag)
    if norm is None:
        return None
    found = negotiate_locale([norm], list(SUPPORTED), sep="-", aliases={})
    return found.lower() if found else None


def parse_accept_language(header: str | None) -> list[str]:
    """The tags of an ``Accept-Language`` header, most wanted first (RFC 9110 §12.5.4).

    Entries with ``q=0``, malformed tags or malformed weights are dropped; equal weights keep
    the header's order; ``*`` is dropped (it names no language in particular).
    """
    weighted: list[tuple[float, int, str]] = []
    for index, item in enumerate((header or "").split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params:
            match = _Q.match(params.split(";")[0])
            if match is None:
                continue
            q = float(match.group(1))
        norm = normalise_tag(tag)
        if norm is None or q <= 0 or q > 1:
            continue
        weighted.append((-q, index, norm))
    return [tag for _, _, tag in sorted(weighted)]


def negotiate(
    subject_locale: str | None, accept_language: str | None, requested: str | None = None
) -> str:
    """The language to use: the switcher's choice, the subject's, the browser's, else English."""
    for candidate in (requested, subject_locale):
        found = supported(candidate)
        if found:
            return found
    for tag in parse_accept_language(accept_language):
        found = supported(tag)
        if found:
            return found
    return DEFAULT


def fallback_chain(locale: str | None) -> list[str]:
    """``fr-CA`` -> ``["fr-ca", "fr"]``: the keys to try in per-locale texts, in order."""
    norm = normalise_tag(locale)
    if norm is None:
        return []
    parts = norm.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


@lru_cache(maxsize=16)
def translations(locale: str | None, domain: str = DOMAIN) -> NullTranslations:
    """The gettext catalog of ``locale`` in ``domain`` (a supported language, else English: the
    message ids)."""
    lang = supported(locale) or DEFAULT
    if lang == DEFAULT:
        return NullTranslations()
    return Translations.load(str(locale_dir()), [lang], domain=domain)


def gettext(locale: str | None, message: str) -> str:
    return translations(locale).ugettext(message)


def _babel_locale(locale: str | None) -> str:
    return supported(locale) or DEFAULT


def format_date(value: date | datetime | None, locale: str | None, format: str = "long") -> str:
    """A date for people (``14 mars 2026``); an aware datetime is taken in UTC. None -> ''."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(UTC).date()
    return _babel_date(value, format=format, locale=_babel_locale(locale))


def format_datetime(value: datetime | None, locale: str | None, format: str = "medium") -> str:
    """A date and time for people, in UTC (``short``/``medium`` get `` UTC`` added). None -> ''."""
    if value is None:
        return ""
    if value.tzinfo is None:
        raise ValueError("naive datetime given; consentflow uses aware UTC datetimes")
    text = _babel_datetime(value, format=format, tzinfo=UTC, locale=_babel_locale(locale))
    return text if format in ("long", "full") else f"{text} UTC"


def format_number(value: float | int, locale: str | None) -> str:
    """A number with the language's separators (``1 234,5`` in French)."""
    return format_decimal(value, locale=_babel_locale(locale))


# ------------------------------------------------------------------------ catalog maintenance


def _repo_paths(domain: str = DOMAIN) -> tuple[Path, Path, Path]:
    """The babel mapping file, the template tree and the source tree (from a checkout)."""
    templates = locale_dir().parent
    return templates / _DOMAINS[domain][0], templates, Path(__file__).resolve().parent


def _pybabel(*args: str) -> None:
    from babel.messages.frontend import CommandLineInterface

    CommandLineInterface().run(["pybabel", "-q", *args])


def extract(pot: Path, domain: str = DOMAIN) -> None:
    """Extract every translatable message of ``domain`` (default: the templates and the
    sources of the web domain) into ``pot``."""
    cfg, templates, src = _repo_paths(domain)
    inputs = [str(templates), str(src)] if _DOMAINS[domain][1] else [str(templates)]
    # Paths in the mapping file are relative to each input directory.
    _pybabel(
        "extract", "-F", str(cfg), "-o", str(pot), "--no-location", "--sort-output",
        "--project", "consentflow", "-k", "_", "-k", "gettext", "-k", "ngettext:1,2",
        *inputs,
    )  # fmt: skip


def rebuild(step: str, lang: str | None = None, domain: str = DOMAIN) -> None:
    """One catalog maintenance step of ``domain``: ``extract``, ``update``, ``compile`` or
    ``init`` (``lang``)."""
    pot = str(locale_dir() / f"{domain}.pot")
    out = str(locale_dir())
    if domain not in _DOMAINS:
        raise SystemExit(f"unknown domain {domain!r}: use one of {', '.join(_DOMAINS)}")
    if step == "extract":
        extract(Path(pot), domain)
    elif step == "update":
        _pybabel("update", "-i", pot, "-d", out, "-D", domain, "--no-wrap", "--ignore-obsolete")
    elif step == "compile":
        _pybabel("compile", "-d", out, "-D", domain, "--statistics")
    elif step == "init" and lang:
        _pybabel("init", "-i", pot, "-d", out, "-D", domain, "-l", lang, "--no-wrap")
    else:
        raise SystemExit(
            "usage: python -m consentflow.i18n [--domain email] extract|update|compile|init LANG"
        )


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    args = sys.argv[1:]
    chosen = DOMAIN
    if args[:1] == ["--domain"] and len(args) > 1:
        chosen, args = args[1], args[2:]
    rebuild(args[0] if args else "", args[1] if len(args) > 1 else None, domain=chosen)

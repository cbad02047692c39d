"""Rendering consent emails (Jinja2): the subject line, plain text and HTML of one message, in the
recipient's language, under the controller's name.

Templates: one set per kind, ``templates/email/{kind}.subject.txt``, ``{kind}.txt`` and
``{kind}.html`` (installed as the package ``consentflow.templates``), on the layouts
``_layout.txt`` / ``_layout.html``. Every word is gettext (Jinja2's i18n extension, new-style,
``trimmed`` blocks), translated by the ``email`` catalog domain (``i18n.EMAIL_DOMAIN``:
``templates/locale/<lang>/LC_MESSAGES/email.po``, extracted with ``templates/babel-email.cfg``).

Invariants:

- The language is the recipient's locale as ``i18n.supported`` reads it (``fr-CA`` -> ``fr``);
  an unknown, malformed, missing or unsupported locale gives English, never an error.
  ``Rendered.locale`` is the language actually used: ``<html lang>`` and ``Content-Language``
  say it.
- Dates: a ``date`` or aware ``datetime`` in the context goes through the ``date`` filter, which
  formats it with Babel in the message's language (``31 janvier 2030``; a datetime is taken in
  UTC); a string is shown as given (a caller that already formatted it).
- ``controller`` (``settings.Controller``: who is responsible for the data) is read from the
  settings at each call and put in every message's footer, HTML and text, unless the caller
  passes one.
- HTML is autoescaped, text is not. Every message has both parts. A missing value is an error
  (``StrictUndefined``), never an empty gap in a message; the one optional value,
  ``withdraw_all_url`` (a revoke link for every purpose), is tested with ``is defined``.
- The text part is wrapped at ``TEXT_WIDTH`` columns (a translated paragraph is one line in the
  catalog), with at most one blank line in a row; a URL is never broken, and French spacing
  before ``:;?!»`` and after ``«`` never starts or ends a line.

Thread safety: one shared environment; nothing per message is installed on it (the gettext
callables read the language from the render context).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import pass_context
from jinja2.runtime import Context

from consentflow import i18n
from consentflow.settings import get_settings


class Kind(StrEnum):
    """One template set per kind of message (also ``EmailMessage.kind``)."""

    RENEWAL_REMINDER = "renewal_reminder"
    COLLECTION_FOLLOWUP = "collection_followup"
    RECONSENT_REQUEST = "reconsent_request"
    #: A fresh preference-page link a person asked for (``consentflow link``, the new-link page).
    PREFERENCE_LINK = "preference_link"


DEFAULT_LOCALE = i18n.DEFAULT
#: The width the plain-text part is wrapped at (RFC 5322 §2.1.1 recommends at most 78).
TEXT_WIDTH = 76
#: The context key holding the message's language (set by ``render``).
_LANG = "lang"


def _lang(ctx: Context) -> str:
    found = ctx.get(_LANG)
    return i18n.supported(found if isinstance(found, str) else None) or DEFAULT_LOCALE


@pass_context
def _gettext(ctx: Context, message: str) -> str:
    return i18n.translations(_lang(ctx), i18n.EMAIL_DOMAIN).ugettext(message)


@pass_context
def _ngettext(ctx: Context, singular: str, plural: str, n: int) -> str:
    return i18n.translations(_lang(ctx), i18n.EMAIL_DOMAIN).ungettext(singular, plural, n)


@pass_context
def _format_date(ctx: Context, value: date | datetime | str) -> str:
    """A date in the message's language (Babel's long form); a string as given."""
    if isinstance(value, jinja2.Undefined | str):
        return str(value)  # a missing value raises (StrictUndefined)
    if not isinstance(value, date):
        raise TypeError(f"an email date must be a date, a datetime or a string, not {value!r}")
    if isinstance(value, datetime):  # as i18n.format_date takes it: the day in UTC
        value = value.astimezone(UTC).date()
    return _long_date(value, _lang(ctx))


@lru_cache(maxsize=4096)
def _long_date(day: date, lang: str) -> str:
    """Babel's long date (cached: a batch's messages mostly share a few days)."""
    return i18n.format_date(day, lang, "long")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment: autoescaping for ``.html`` only, strict about missing values,
    gettext from the ``email`` domain in the language of the render context's ``lang``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("consentflow.templates", "email"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
        auto_reload=False,  # packaged templates: no file check on every render
    )
    env.policies["ext.i18n.trimmed"] = True  # as templates/babel-email.cfg extracts them
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters["date"] = _format_date
    return env


def locale_chain(locale: str | None) -> list[str]:
    """``fr-CA`` -> ``["fr-ca", "fr", "en"]``: the locales tried, most specific first."""
    chain = i18n.fallback_chain(locale)
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return chain


def language(locale: str | None) -> str:
    """The language a message to someone with ``locale`` is written in (English by default)."""
    return i18n.supported(locale) or DEFAULT_LOCALE


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    locale: str


# Spaces that must not start or end a line of text (French: "ici :", "« titre »").
_TIED = re.compile(r" (?=[:;?!»])|(?<=«) ")
_NBSP_MARK = "\u2060\u00a0\u2060"  # a marker no template text contains; textwrap keeps it


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """``text`` with each line longer than ``width`` wrapped at spaces (URLs are never broken),
    at most one blank line in a row, and one newline at the end."""
    out: list[str] = []
    for line in re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text.strip()).split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        tied = _TIED.sub(_NBSP_MARK, line)
        wrapped = textwrap.wrap(tied, width, break_long_words=False, break_on_hyphens=False) or [""]
        out.extend(part.replace(_NBSP_MARK, " ") for part in wrapped)
    return "\n".join(line.rstrip() for line in out) + "\n"


def render(kind: Kind | str, locale: str | None, context: dict[str, Any]) -> Rendered:
    """The subject line, plain text and HTML of one message in the recipient's language."""
    env = environment()
    kind = Kind(kind)
    lang = language(locale)
    values = {"controller": get_settings().controller, **context, _LANG: lang}
    subject = env.get_template(f"{kind.value}.subject.txt").render(values)
    return Rendered(
        subject=" ".join(subject.split()),
        text=wrap_text(env.get_template(f"{kind.value}.txt").render(values)),
        html=env.get_template(f"{kind.value}.html").render(values),
        locale=lang,
    )

"""Rendering consent emails (Jinja2): the subject line, plain text and HTML of one message.

Templates: ``templates/email/{locale}/{kind}.subject.txt``, ``{kind}.txt`` and ``{kind}.html``
(installed as the package ``consentflow.templates``). HTML is autoescaped, text is not; a locale
falls back from ``fr-CA`` to ``fr`` to ``en``. Every message has both parts. A missing value is
an error (``StrictUndefined``), never an empty gap in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import jinja2


class Kind(StrEnum):
    """One template set per kind of message (also ``EmailMessage.kind``)."""

    RENEWAL_REMINDER = "renewal_reminder"
    COLLECTION_FOLLOWUP = "collection_followup"
    RECONSENT_REQUEST = "reconsent_request"
    #: A fresh preference-page link a person asked for (``consentflow link``, the new-link page).
    PREFERENCE_LINK = "preference_link"


DEFAULT_LOCALE = "en"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment: autoescaping for ``.html`` only, strict about missing values."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("consentflow.templates", "email"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def locale_chain(locale: str | None) -> list[str]:
    """``fr-CA`` -> ``["fr-ca", "fr", "en"]``: the locales tried, most specific first."""
    tag = (locale or DEFAULT_LOCALE).strip().lower().replace("_", "-")
    parts = [p for p in tag.split("-") if p]
    chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return chain


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    locale: str


def render(kind: Kind | str, locale: str | None, context: dict[str, Any]) -> Rendered:
    """The subject line, plain text and HTML of one message in the best available locale."""
    env = environment()
    kind = Kind(kind)
    for loc in locale_chain(locale):
        try:
            text_t = env.get_template(f"{loc}/{kind.value}.txt")
        except jinja2.TemplateNotFound:
            continue
        subject = env.get_template(f"{loc}/{kind.value}.subject.txt").render(context)
        return Rendered(
            subject=" ".join(subject.split()),
            text=text_t.render(context),
            html=env.get_template(f"{loc}/{kind.value}.html").render(context),
            locale=loc,
        )
    raise jinja2.TemplateNotFound(f"{DEFAULT_LOCALE}/{kind.value}.txt")

"""Jinja2 templates of the web pages (``templates/web``, installed as ``consentflow.templates``),
in the language of the person reading them, and the helpers every page uses.

How a page gets its language (``consentflow.i18n`` decides, see ``i18n.negotiate``):

- Page code that knows the subject calls ``locale_for(request, subject.locale)`` once, before
  rendering: the result is kept on ``request.state.locale``, so the page and any error page
  rendered later for the same request use it. Pages without a subject need do nothing: the
  switcher's ``?lang=xx`` and ``Accept-Language`` decide.
- ``render(request, name, context)`` renders with that language; so does a plain
  ``templates.TemplateResponse`` (the error pages): the template callables read it from the
  request at render time.

In templates: ``{% trans %}...{% endtrans %}``, ``_("...")``, ``gettext`` / ``ngettext`` (Jinja2's
i18n extension, new-style: ``_("Hello %(name)s", name=x)``, autoescape-safe; blocks are
``trimmed``, as the Babel extraction is); ``current_locale()`` (the page's language, for
``<html lang>``); ``language_links()`` (the switcher); ``lang_url(url)`` (a form action or
link that keeps the switcher's choice); ``site_controller()`` (the controller's identity, for
pages rendered without ``render``); filters ``format_date``, ``format_datetime`` (UTC),
``format_number`` in the page's language. Python page code that shows text translates it with
``gettext_for(request, "...")`` (mark the literal with ``_`` for extraction).

The switcher's choice survives a POST: forms post to ``lang_url(...)`` and redirects after a POST
go to ``keep_lang(request, url)``, so ``?lang=xx`` travels with them (and nowhere else: it is
never stored). Every page gets ``controller`` (``settings.Controller``, read per render, so a
changed configuration shows at once) for its footer and title unless the page passes its own.

Thread safety: one shared environment; nothing per request is installed on it. The gettext
callables find the language in the render context, so concurrent requests in different
languages never see each other's catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from consentflow import i18n
from consentflow.settings import get_settings

TEMPLATES_DIR = str(files("consentflow.templates").joinpath("web"))


def locale_for(request: Request, subject_locale: str | None = None) -> str:
    """The page's language for this request (and subject, when known); kept for the request."""
    locale = i18n.negotiate(
        subject_locale,
        request.headers.get("accept-language"),
        request.query_params.get(i18n.QUERY_PARAM),
    )
    request.state.locale = locale
    return locale


def keep_lang(request: Request, url: str) -> str:
    """``url`` with the switcher's ``?lang=`` of this request added, when there is a valid one."""
    chosen = i18n.supported(request.query_params.get(i18n.QUERY_PARAM))
    if chosen is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}{urlencode([(i18n.QUERY_PARAM, chosen)])}"


def page_locale(request: Request) -> str:
    """The language of this request's page (``locale_for``'s, once it ran for the request)."""
    return getattr(request.state, "locale", None) or locale_for(request)


_request_locale = page_locale


def _locale(ctx: Context) -> str:
    explicit = ctx.get("locale")
    if isinstance(explicit, str) and i18n.supported(explicit):
        return i18n.supported(explicit) or i18n.DEFAULT
    request = ctx.get("request")
    return _request_locale(request) if isinstance(request, Request) else i18n.DEFAULT


def gettext_for(request: Request, message: str) -> str:
    """``message`` in the request's language (for text built in Python, e.g. a page title)."""
    return i18n.gettext(_request_locale(request), message)


@dataclass(frozen=True)
class LanguageLink:
    code: str
    name: str
    url: str
    current: bool


def language_links(request: Request, current: str) -> list[LanguageLink]:
    """The switcher: the same page (path and query kept) in each supported language."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != i18n.QUERY_PARAM]
    return [
        LanguageLink(
            code=code,
            name=i18n.NAMES[code],
            url=f"{request.url.path}?{urlencode([*kept, (i18n.QUERY_PARAM, code)])}",
            current=code == current,
        )
        for code in i18n.SUPPORTED
    ]


@pass_context
def _gettext(ctx: Context, message: str) -> str:
    return i18n.translations(_locale(ctx)).ugettext(message)


@pass_context
def _ngettext(ctx: Context, singular: str, plural: str, n: int) -> str:
    return i18n.translations(_locale(ctx)).ungettext(singular, plural, n)


@pass_context
def _pgettext(ctx: Context, context: str, message: str) -> str:
    return i18n.translations(_locale(ctx)).upgettext(context, message)


@pass_context
def _npgettext(ctx: Context, context: str, singular: str, plural: str, n: int) -> str:
    return i18n.translations(_locale(ctx)).unpgettext(context, singular, plural, n)


@pass_context
def _current_locale(ctx: Context) -> str:
    return _locale(ctx)


@pass_context
def _language_links(ctx: Context) -> list[LanguageLink]:
    request = ctx.get("request")
    return language_links(request, _locale(ctx)) if isinstance(request, Request) else []


@pass_context
def _lang_url(ctx: Context, url: str) -> str:
    request = ctx.get("request")
    return keep_lang(request, url) if isinstance(request, Request) else url


def _site_controller() -> Any:
    return get_settings().controller


@pass_context
def _format_date(ctx: Context, value: date | datetime | None, format: str = "long") -> str:
    return i18n.format_date(value, _locale(ctx), format)


@pass_context
def _format_datetime(ctx: Context, value: datetime | None, format: str = "medium") -> str:
    return i18n.format_datetime(value, _locale(ctx), format)


@pass_context
def _format_number(ctx: Context, value: float | int) -> str:
    return i18n.format_number(value, _locale(ctx))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True  # as templates/babel.cfg extracts them
    env.install_gettext_callables(  # type: ignore[attr-defined]
        _gettext, _ngettext, newstyle=True, pgettext=_pgettext, npgettext=_npgettext
    )
    env.globals.update(
        current_locale=_current_locale,
        language_links=_language_links,
        lang_url=_lang_url,
        site_controller=_site_controller,
    )
    env.filters.update(
        format_date=_format_date, format_datetime=_format_datetime, format_number=_format_number
    )
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    *,
    locale: str | None = None,
) -> HTMLResponse:
    """A page from a template, in ``locale`` (default: ``locale_for`` the request), with the
    controller's identity (``controller``) unless ``context`` gives its own."""
    page_locale = i18n.supported(locale) or _request_locale(request)
    full = {**context, "locale": page_locale}
    full.setdefault("controller", get_settings().controller)
    return templates.TemplateResponse(request, name, full, status_code=status_code)


def secure_cookies() -> bool:
    """Whether cookies get ``Secure``: the public URL is https."""
    return get_settings().public_url.lower().startswith("https://")

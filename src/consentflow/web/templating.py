"""Jinja2 templates of the web pages (``templates/web``, installed as ``consentflow.templates``)
and the two helpers every page uses: ``render`` and ``secure_cookies``."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from consentflow.settings import get_settings

TEMPLATES_DIR = str(files("consentflow.templates").joinpath("web"))
templates = Jinja2Templates(directory=TEMPLATES_DIR)


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A page from a template."""
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def secure_cookies() -> bool:
    """Whether cookies get ``Secure``: the public URL is https."""
    return get_settings().public_url.lower().startswith("https://")

"""The one web app: the API (/api/v1), people's pages (/l/...), the dashboard, sign-in.

``create_app()`` builds it; ``consentflow serve`` runs it with uvicorn. Every expected failure is a
4xx with a one-line message (JSON ``{"detail": ...}`` under /api, a page elsewhere; see
``web.errors``); bad input is a 422 that names the field. Wiring only: routers from ``web.api`` and
``web.pages``, headers and body limits from ``web.middleware``, error answers from ``web.errors``.
"""

from __future__ import annotations

from fastapi import FastAPI

from consentflow.web import api, errors, pages
from consentflow.web.api import lists as list_api
from consentflow.web.api import subject_search
from consentflow.web.middleware import BodyLimits, SecurityHeaders
from consentflow.web.pages import lists as list_pages
from consentflow.web.pages import subjects as subject_pages
from consentflow.web.templating import TEMPLATES_DIR, templates

__all__ = ["TEMPLATES_DIR", "create_app", "templates"]


def create_app() -> FastAPI:
    """The app: its routers, ``BodyLimits`` (authentication before any body is read, a cap on
    every body) inside ``SecurityHeaders`` (so its answers get the headers too), and the error
    handlers."""
    app = FastAPI(
        title="consentflow",
        version="1",
        summary="Consent ledger API: record consent, check access, follow withdrawals.",
        docs_url=None,  # the bundled docs pages load from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.include_router(api.router)
    app.include_router(subject_search.router)
    app.include_router(list_api.router)
    app.include_router(pages.router)
    app.include_router(subject_pages.router)
    app.include_router(list_pages.router)
    app.add_middleware(BodyLimits)
    app.add_middleware(SecurityHeaders)  # added last: outermost
    errors.install(app)
    return app

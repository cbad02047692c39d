"""People's pages, by audience: sign-in (``login``), the email-link pages (``links``) and the
preference page with the receipt download (``preferences``), the erasure page a person
confirms (``erasure``), the compliance dashboard (``dashboard``), asking for a new link by email
(``newlink``). None is in the OpenAPI document.

``router`` lists every page route, flat and in order (FastAPI's ``include_router`` would wrap
each router instead).
"""

from __future__ import annotations

from fastapi import APIRouter

from consentflow.web.pages import actions, dashboard, erasure, links, login, newlink, preferences
from consentflow.web.pages.login import login_page

__all__ = ["login_page", "router"]

router = APIRouter(include_in_schema=False)
for _module in (login, dashboard, links, preferences, erasure, newlink, actions):
    router.routes.extend(_module.router.routes)

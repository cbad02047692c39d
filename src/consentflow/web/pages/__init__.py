"""People's pages, by audience: sign-in (``login``), the email-link and preference pages
(``links``), the compliance dashboard (``dashboard``). None is in the OpenAPI document.

``router`` lists every page route, flat and in order (FastAPI's ``include_router`` would wrap
each router instead).
"""

from __future__ import annotations

from fastapi import APIRouter

from consentflow.web.pages import dashboard, links, login, newlink
from consentflow.web.pages.login import login_page

__all__ = ["login_page", "router"]

router = APIRouter(include_in_schema=False)
for _module in (login, dashboard, links, newlink):
    router.routes.extend(_module.router.routes)

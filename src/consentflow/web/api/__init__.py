"""The JSON API under /api/v1: thin over the service functions, one router per resource.

Each route authenticates (``Depends(Require(...))``), calls service functions inside the request's
single transaction and shapes the answer; the rules live in the service, read-side queries in
``consentflow.reports``. Expected failures (``ConsentflowError``) become 4xx answers in
``web.errors``.

Routers, in the order their paths appear: ``meta`` (health, me), ``purposes`` (+ the systems
list), ``subjects`` (+ receipt, erase), ``consents`` (changes, requests), ``access`` (check,
feed, check/batch, export/eligible), ``deliveries`` (+ replay), ``runs``, ``audit``; then
``metrics``, the one route at the root (``/metrics``, where Prometheus looks).
"""

from __future__ import annotations

from fastapi import APIRouter

from consentflow.web.api import (
    access,
    audit,
    consents,
    deliveries,
    meta,
    metrics,
    purposes,
    runs,
    subjects,
)
from consentflow.web.api._params import api_actor, provenance

__all__ = ["api_actor", "provenance", "router"]

#: Every API route, flat and in order (each resource router already adds /api/v1 and ERRORS).
router = APIRouter()
for _module in (meta, purposes, subjects, consents, access, deliveries, runs, audit, metrics):
    router.routes.extend(_module.router.routes)

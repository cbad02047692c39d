"""Schemathesis over the app's own OpenAPI schema: whatever the input, never a 500.

Runs in-process against the ASGI app with a fixed, small number of derandomised examples per
operation (so the run is fast and repeatable), with an admin token so every operation is reached,
on a seeded database where the schema's examples (alice, news, crm) exist. Besides "no server
error", every answer must use a documented status code and content type and match its schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from consentflow import db, lifecycle
from consentflow.lifecycle import Actor
from consentflow.web.app import create_app
from tests.support.web import bearer, seed

# Starting flow runs is tested on its own (web/test_runs.py): fuzzing it would start real runs.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(
    method="POST", path="/api/v1/runs/{flow}"
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def admin(engine):
    tokens = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.revoke(s, "alice", "news", Actor())  # a delivery and a feed item exist
    return tokens.admin


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails(case, admin):
    case.call_and_validate(headers=bearer(admin), checks=CHECKS)

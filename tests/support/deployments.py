"""Deployments on the session's Prefect test server, for tests of runs created on a worker.

A process work pool with no worker: a deployment run is created (Scheduled) and stays there, which
is all a test of creation needs (the parameters, tags and audit entry of the created run); the
worker end to end is tested elsewhere. Deployments made here: ``expiry-sweep/adhoc`` (the only
one of its flow), ``reconsent/first`` and ``reconsent/second`` (a flow with several); none of
``collection-followups`` (a flow without a deployment).
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

POOL = "consentflow-test"

#: Flow -> the names of its deployments on the test server.
DEPLOYED = {"expiry-sweep": ["adhoc"], "reconsent": ["first", "second"]}


def deploy() -> dict[str, UUID]:
    """Create the pool and the deployments (again: applying is idempotent); their ids by
    ``FLOW/NAME``. Call inside the ``prefect_harness``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from consentflow import runs

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    ids: dict[str, UUID] = {}
    for flow, names in DEPLOYED.items():
        flow_fn, _ = runs.load_flow(flow)
        for name in names:
            ids[f"{flow}/{name}"] = flow_fn.to_deployment(name=name, work_pool_name=POOL).apply()
    return ids


def flow_run(run_id: str) -> Any:
    """The flow run as the Prefect server has it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def flow_run_count() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(limit=200))


def api_url() -> str:
    """The test server's API address (what PREFECT_API_URL would say)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    assert url, "call inside the prefect_harness"
    return url

"""Ad-hoc flow runs (compliance's sweep on demand), always on a worker: the API creates a
deployment run on the Prefect server and answers at once with its id and UI link.

The web process never runs a flow itself (a run there would use the web app's settings, ignore
the deployment's limits, and die with a restart of the web app). Order of checks, each refusing
with nothing created: the parameters (422 naming the field: unknown fields, out-of-range values,
unknown purposes or systems, a future ``as_of`` on a real run), then the Prefect server and the
flow's deployment (409). Who asked (``api:TOKEN``) is the run's ``requested-by:`` tag, the
``flow.requested`` audit entry written when the run is created, and the run's own end entry.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Depends, Path, Query

from consentflow.tokens import TokenInfo
from consentflow.web.api._params import api_actor, resource_router
from consentflow.web.auth import COMPLIANCE
from consentflow.web.schemas import NOT_FOUND, Error, RunAccepted

router = resource_router(["runs"])


FlowPath = Annotated[
    str,
    Path(pattern=r"^[a-z][a-z-]{0,63}$", description="A flow, e.g. expiry-sweep", examples=["x"]),
]
DeploymentQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f/]+$",
        description="Which of the flow's deployments (default: its only one)",
    ),
]


@router.post(
    "/runs/{flow}",
    status_code=202,
    response_model=RunAccepted,
    responses={
        **NOT_FOUND,
        409: {
            "model": Error,
            "description": "No Prefect server configured (PREFECT_API_URL) or answering, or no "
            "deployment of the flow on it (`consentflow deploy`)",
        },
    },
)
def start_run(
    flow: FlowPath,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    parameters: Annotated[
        dict[str, Any],
        Body(
            description="The flow's parameters, as in the Prefect UI form (e.g. "
            '{"dry_run": true, "as_of": "2026-12-31T23:59:59Z"}); unknown ones are refused.',
        ),
    ],
    deployment: DeploymentQuery = None,
) -> dict[str, Any]:
    """Start a flow now on a worker (compliance's ad-hoc sweep): a run of the flow's deployment.

    The answer (202) names the run (``run_id``, its ``ui_url`` in the Prefect UI); the run goes
    on on a worker and leaves its audit entries like any run, with ``requested_by`` naming the
    token (the latest runs are on the dashboard). The parameters are checked first: unknown or
    invalid ones are a 422 naming the field. Without a Prefect server, or without a deployment
    of the flow on it, the answer is 409 and nothing starts.
    """
    from consentflow import runs

    started = runs.start_deployment_run(flow, parameters, api_actor(caller), deployment)
    return started.as_dict()

"""Ad-hoc flow runs (compliance's sweep on demand): validated first, then started in the
background against the configured Prefect server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Depends, Path

from consentflow.errors import Conflict
from consentflow.tokens import TokenInfo
from consentflow.web.api._params import api_actor, resource_router
from consentflow.web.auth import COMPLIANCE
from consentflow.web.schemas import NOT_FOUND, Error, RunAccepted

router = resource_router(["runs"])


FlowPath = Annotated[
    str,
    Path(pattern=r"^[a-z][a-z-]{0,63}$", description="A flow, e.g. expiry-sweep", examples=["x"]),
]


@router.post(
    "/runs/{flow}",
    status_code=202,
    response_model=RunAccepted,
    responses={
        **NOT_FOUND,
        409: {"model": Error, "description": "No Prefect server configured (PREFECT_API_URL)"},
    },
)
def start_run(
    flow: FlowPath,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    parameters: Annotated[
        dict[str, Any],
        Body(
            description="The flow's parameters, as in the Prefect UI form (e.g. "
            '{"dry_run": true, "as_of": "2026-12-31T23:59:59Z"}).',
        ),
    ],
) -> dict[str, Any]:
    """Start a lifecycle flow now (compliance's ad-hoc sweep), in the background.

    The parameters are validated first (422 naming the field). The run needs a Prefect server
    (``PREFECT_API_URL``): without one the answer is 409, since the web process must not start
    a temporary server of its own. The run then goes on after the answer, reported to that
    server, and leaves its audit entries like any run, with ``requested_by`` naming the token
    (the latest runs are on the dashboard).
    """
    import threading

    from consentflow import runs

    flow_fn, params = runs.prepare_flow(flow, parameters)
    if not prefect_api_url():
        raise Conflict(
            "no Prefect server is configured: set PREFECT_API_URL for the web app to start runs"
        )
    who = api_actor(caller)

    def run() -> None:
        with runs.requested_by(who):
            flow_fn(params)

    threading.Thread(target=run, name=f"run-{flow}", daemon=True).start()
    return {
        "flow": flow,
        "parameters": params.model_dump(mode="json"),
        "accepted_at": datetime.now(UTC),
        "requested_by": who,
    }


def prefect_api_url() -> str | None:
    """The Prefect API the process reports to (``PREFECT_API_URL``), or None if unset."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None

"""Flows from the workspace (``/flows``): compliance previews a flow as a dry run, or starts it
for real, as a run of its deployment on a worker.

Both go through ``runs.start_deployment_run``, as ``POST /api/v1/runs/{flow}`` does: parameters
checked first, then the Prefect server and the flow's deployment; the run is tagged
``requested-by:web:TOKEN`` and audited ``flow.requested`` when created; a dry run leaves its
``flow.dry_run`` summary when it ends (the page lists each flow's latest run, from
``reports.runs``). The web process never runs a flow itself (see ``web.api.runs``): without a
Prefect server (``PREFECT_API_URL``) or a deployment of the flow, the page says so (409) and
nothing starts; ``consentflow run FLOW [--dry-run]`` runs it from a terminal instead.

Idempotent: each form carries a one-time value (``nonce``), sent to Prefect as the run's
idempotency key; a form sent again gets the run the first one created, audited once. Failure
modes: unknown flow 404; a missing or wrong CSRF token 403; a flow without a dry run asked for a
preview 422; nothing starts then.
"""

from __future__ import annotations

import re
import secrets
import uuid
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from consentflow import reports, runs
from consentflow.errors import Conflict, ConsentflowError, InvalidInput, NotFound
from consentflow.models import AuditEntry
from consentflow.tokens import TokenInfo
from consentflow.web.auth import COMPLIANCE, ReadSession
from consentflow.web.pages import _staff

router = APIRouter(include_in_schema=False)

FlowName = Annotated[str, Path(pattern=r"^[a-z][a-z-]{0,63}$")]
FormText = Annotated[str | None, Form(max_length=1000)]
Nonce = Annotated[str, Form(max_length=64)]
Confirm = Annotated[str, Form(max_length=8)]
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

#: The two ways to start a flow: form path -> (parameters, what the confirm step says).
MODES: dict[str, tuple[dict[str, Any], str]] = {
    "preview": (
        {"dry_run": True},
        "Dry run: changes nothing, sends nothing; its summary says what a real run would do",
    ),
    "start": ({}, "Real run: changes consents and sends emails and webhooks as scheduled runs do"),
}


def requester(caller: TokenInfo) -> str:
    """Who asked, as the run's tag and audit entry carry it: the workspace and the token."""
    return f"web:{caller.name}"


def _known(name: str) -> None:
    if name not in runs.flow_names():
        raise NotFound(f"no such flow {name!r}: choose one of {', '.join(runs.flow_names())}")


@cache
def _dry_runs(name: str) -> bool:
    """Whether the flow takes ``dry_run`` (imports the flow, once per process)."""
    _, model = runs.load_flow(name)
    return "dry_run" in model.model_fields


def _requested(session: Session, run_id: str | None) -> dict[str, Any] | None:
    """What the page reports after a start: the run's ``flow.requested`` entry."""
    if not run_id:
        return None
    try:
        uuid.UUID(run_id)
    except ValueError:
        return None
    detail = session.exec(
        select(AuditEntry.detail)
        .where(AuditEntry.run_id == run_id, AuditEntry.action == runs.REQUESTED)
        .order_by(col(AuditEntry.seq).desc())
    ).first()
    return dict(detail) if detail else None


def _page(
    request: Request,
    session: Session,
    caller: TokenInfo,
    *,
    started: dict[str, Any] | None = None,
    message: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    flows = [
        {"name": n, "dry_run": _dry_runs(n), "nonce": secrets.token_urlsafe(18)}
        for n in runs.flow_names()
    ]
    latest = reports.runs(session)
    context = {
        "flows": flows,
        "server": runs.prefect_api_url(),
        "started": started,
        "message": message,
        "latest": latest,
        "cell": _cell,
    }
    return _staff.page(request, session, caller, "flows.html", context, status_code)


def _cell(value: Any) -> tuple[str, str | None]:
    """A report cell as (text, link)."""
    if value is None:
        return "-", None
    if isinstance(value, reports.Link):
        return value.text, value.href
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M"), None
    return str(value), None


@router.get("/flows", response_class=HTMLResponse)
def flows_page(
    request: Request,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    run: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The flows, each with a preview (dry run) and a start, and their latest runs."""
    return _page(request, session, caller, started=_requested(session, run))


@router.post("/flows/{name}/preview", response_class=HTMLResponse)
def preview(
    request: Request,
    name: FlowName,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    csrf_token: FormText = None,
    nonce: Nonce = "",
    confirm: Confirm = "",
) -> Response:
    """A dry run of the flow on a worker, after a confirmation step."""
    return _start(request, session, caller, name, "preview", csrf_token, nonce, confirm)


@router.post("/flows/{name}/start", response_class=HTMLResponse)
def start(
    request: Request,
    name: FlowName,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    csrf_token: FormText = None,
    nonce: Nonce = "",
    confirm: Confirm = "",
) -> Response:
    """A real run of the flow on a worker, after a confirmation step."""
    return _start(request, session, caller, name, "start", csrf_token, nonce, confirm)


def _start(
    request: Request,
    session: Session,
    caller: TokenInfo,
    name: str,
    mode: str,
    csrf_token: str | None,
    nonce: str,
    confirm: str,
) -> Response:
    _known(name)
    if not _staff.csrf_ok(request, session, csrf_token):
        return _staff.refused(request, session, caller, "/flows")
    values, what = MODES[mode]
    if not _NONCE.match(nonce):
        message = "nonce: the form is incomplete; open the page again and repeat the action"
        return _page(request, session, caller, message=message, status_code=422)
    if mode == "preview" and not _dry_runs(name):
        message = f"{name} has no dry run: it can only be started for real"
        return _page(request, session, caller, message=message, status_code=422)
    if confirm != _staff.CONFIRMED:
        return _staff.confirm(
            request,
            session,
            caller,
            _staff.Confirmation(
                title=f"{'Preview' if mode == 'preview' else 'Start'} {name}: confirm",
                action=f"/flows/{name}/{mode}",
                facts=[
                    ("Flow", name),
                    ("Mode", what),
                    ("Where", "a run of the flow's deployment, on a worker"),
                    ("Recorded as", requester(caller)),
                ],
                fields={"nonce": nonce},
                button="Start the dry run" if mode == "preview" else f"Start {name} for real",
                back="/flows",
                danger=mode == "start",
            ),
        )
    try:
        started = runs.start_deployment_run(
            name, dict(values), requester(caller), idempotency_key=f"workspace-{mode}-{nonce}"
        )
    except (Conflict, InvalidInput) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        return _page(request, session, caller, message=f"Nothing was started: {exc}",
                     status_code=status)  # fmt: skip
    except ConsentflowError as exc:
        return _page(request, session, caller, message=str(exc), status_code=409)
    return RedirectResponse(f"/flows?run={started.run_id}", status_code=303)

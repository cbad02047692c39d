"""What every flow run leaves behind: a summary of counts and one audit entry per run; and how
a run is asked for: by name, with validated parameters, on a worker (a deployment run) or here.

Compliance must be able to answer "which run did this, what else did it do, and who asked": each
item a run changes carries the run id in its own audit entry (through ``lifecycle.Actor.run_id``),
and the run itself is recorded here with its parameters, counts, outcome and, for an ad-hoc run,
who asked for it (``requested_by``, from the run's ``requested-by:WHO`` tag). A deployment run
started through ``start_deployment_run`` is also recorded when it is CREATED (``flow.requested``),
so an ad-hoc run that never starts or dies unseen still shows who asked.

Invariants:

* A run has at most one end entry (``flow.run`` / ``flow.dry_run``): its outcome is
  ``completed``, ``failed``, ``cancelled`` or ``crashed``, agreeing with Prefect's final state.
  ``record_ended`` / ``record_crashed`` (hooks, the operator-alerts flow) write one only for a
  run that has none, under the audit head's lock, so two of them never both write.
* Parameters are checked before anything starts (``prepare_flow``): the model derived from the
  flow's signature refuses unknown fields and out-of-range values; named purposes and systems
  must exist; ``as_of`` may lie in the future only for a dry run. Each failure is one
  ``InvalidInput`` naming the field (the API's 422, the CLI's exit 2).

Failure modes: without a Prefect server, or without a deployment of the flow on it,
``start_deployment_run`` raises ``Conflict`` and creates nothing; a run that Prefect created is
always followed by its ``flow.requested`` entry (if the database then fails, the run still runs
and records its own end entry; the caller sees the database error).

This module finds flows through the ``consentflow.flows`` entry points declared in
``pyproject.toml``, never by importing ``flows``; Prefect is imported only where a run is asked
of a server.
"""

from __future__ import annotations

import inspect
import typing
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from sqlmodel import Session, col, select

from consentflow import audit
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.models import ActorType, AuditEntry, AuditHead, Channel, utcnow
from consentflow.timeutil import as_utc

#: The end entries of a run (one per run) and the entry of a run asked for on a worker.
END_ACTIONS = ("flow.run", "flow.dry_run")
REQUESTED = "flow.requested"

#: The outcomes an end entry may have, as Prefect's final states name them.
OUTCOMES = ("completed", "failed", "cancelled", "crashed")

#: The tag a run asked for by someone carries: ``requested-by:api:carol``.
REQUESTED_BY_TAG = "requested-by:"


@dataclass
class RunSummary:
    """Counts per (purpose, outcome) of one flow run, plus what is needed to audit it."""

    flow: str
    parameters: dict[str, Any]
    dry_run: bool = False
    run_id: str | None = None
    deployment: str | None = None
    #: Who asked for an ad-hoc run (``api:TOKEN`` through the web API, ``cli:USER`` from the
    #: terminal), read from the run's ``requested-by:`` tag; None for scheduled and triggered runs.
    requested_by: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = "running"
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Why a run ended cancelled or crashed, in one line (Prefect's state message), if known.
    reason: str | None = None

    def add(self, purpose: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(purpose, outcome)] += n

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, o), n in self.counts.items() if outcome is None or o == outcome)

    def rows(self) -> list[dict[str, Any]]:
        """The summary table: one row per purpose and outcome, sorted."""
        return [
            {"purpose": p, "outcome": o, "count": n} for (p, o), n in sorted(self.counts.items())
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "run_id": self.run_id,
            "deployment": self.deployment,
            "requested_by": self.requested_by,
            "dry_run": self.dry_run,
            "outcome": self.outcome,
            "parameters": self.parameters,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "totals": {o: self.total(o) for o in sorted({o for _, o in self.counts})},
            "counts": self.rows(),
        } | ({"reason": self.reason} if self.reason else {})


def record_run(session: Session, summary: RunSummary, outcome: str) -> None:
    """Close the summary with ``outcome`` and append the run's end entry."""
    summary.outcome = outcome
    summary.finished_at = utcnow()
    detail = summary.as_dict()
    audit.record(
        session,
        "flow.run" if not summary.dry_run else "flow.dry_run",
        actor_type=ActorType.SYSTEM.value,
        actor=summary.deployment or summary.flow,
        channel=Channel.SYSTEM.value,
        run_id=summary.run_id,
        detail=detail,
    )


def has_ended(session: Session, run_id: str) -> bool:
    """Whether the run already has its end entry."""
    found = session.exec(
        select(AuditEntry.seq).where(
            AuditEntry.run_id == run_id, col(AuditEntry.action).in_(END_ACTIONS)
        )
    ).first()
    return found is not None


def record_ended(
    session: Session, run_id: str, flow: str, outcome: str, reason: str | None = None
) -> bool:
    """The end entry of a run that could not write its own (killed, cancelled before or outside
    its body), with ``outcome`` and ``reason``; nothing if the run already has one. True if
    written. What the run's ``flow.requested`` entry knew (parameters, dry run, deployment,
    who asked) is carried over; its counts are unknown (none).

    The audit head is locked first, so two callers (a hook and the operator-alerts flow) never
    both write (on SQLite the write transaction already serialises them)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown run outcome {outcome!r}")
    session.exec(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update()).one()
    if has_ended(session, run_id):
        return False
    asked = session.exec(
        select(AuditEntry.detail)
        .where(AuditEntry.run_id == run_id, AuditEntry.action == REQUESTED)
        .order_by(col(AuditEntry.seq).desc())
    ).first()
    asked = dict(asked or {})
    parameters = dict(asked.get("parameters") or {})
    summary = RunSummary(
        flow=flow,
        parameters=parameters,
        dry_run=bool(parameters.get("dry_run", False)),
        run_id=run_id,
        deployment=asked.get("deployment"),
        requested_by=asked.get("requested_by"),
        reason=_one_line(reason),
    )
    record_run(session, summary, outcome)
    return True


def record_crashed(session: Session, run_id: str, flow: str, reason: str | None) -> bool:
    """Record that Prefect marked ``run_id`` Crashed (idempotent: see ``record_ended``)."""
    return record_ended(session, run_id, flow, "crashed", reason)


def _one_line(text: str | None, limit: int = 500) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0][:limit] if lines else None


def requester(tags: typing.Iterable[str]) -> str | None:
    """Who asked for a run, from its ``requested-by:WHO`` tag (None if it has none)."""
    for tag in tags:
        if tag.startswith(REQUESTED_BY_TAG):
            return tag.removeprefix(REQUESTED_BY_TAG) or None
    return None


# --------------------------------------------------------------------------------------------
# Finding a flow by name, and its parameters
# --------------------------------------------------------------------------------------------

#: The entry-point group the flows are declared in (``pyproject.toml``): name -> flow function.
#: The package never imports the top-level ``flows`` package; it finds each flow through here.
FLOW_ENTRY_POINTS = "consentflow.flows"


def flow_names() -> list[str]:
    """The public names of the flows, e.g. ``expiry-sweep``."""
    return sorted({ep.name for ep in entry_points(group=FLOW_ENTRY_POINTS)})


def load_flow(name: str) -> tuple[Any, type[BaseModel]]:
    """The flow and its parameter model, derived from the flow function's signature (each
    parameter's ``Annotated`` type, constraints and default), refusing unknown fields."""
    found = [ep for ep in entry_points(group=FLOW_ENTRY_POINTS) if ep.name == name]
    if not found:
        raise NotFound(f"unknown flow {name!r}: choose one of {', '.join(flow_names())}")
    flow_fn = found[0].load()
    return flow_fn, parameter_model(flow_fn, name)


def parameter_model(flow_fn: Any, name: str) -> type[BaseModel]:
    """A pydantic model of a flow's parameters (``extra="forbid"``)."""
    fn = getattr(flow_fn, "fn", flow_fn)  # a Prefect flow wraps the function
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    title = "".join(part.title() for part in name.split("-")) + "Parameters"
    model: type[BaseModel] = create_model(title, __config__=ConfigDict(extra="forbid"), **fields)
    return model


def prepare_flow(name: str, values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The flow and the given parameters validated (JSON-ready, only the fields given, so a
    deployment's own defaults still apply); ``InvalidInput`` naming the field otherwise.

    Beyond the model: ``as_of`` may lie in the future only for a dry run (previewing is useful,
    but nothing may expire or lapse before its time); the purposes and systems named must exist,
    so a typo is refused before a run starts (and before it leaves a failed run in the audit
    trail). A flow module may add its own rule as ``check_parameters(values)`` raising
    ``ValueError`` (``values``: the validated parameters, defaults included).
    """
    flow_fn, model = load_flow(name)
    try:
        params = model(**values)
    except ValidationError as exc:
        raise InvalidInput(_validation_message(exc)) from None
    checked = dict(params)
    as_of = checked.get("as_of")
    if isinstance(as_of, datetime) and not checked.get("dry_run") and as_utc(as_of) > utcnow():
        raise InvalidInput("as_of: as_of is in the future: only a dry run may look ahead")
    _check_names(checked.get("purposes"), checked.get("systems"))
    module = inspect.getmodule(getattr(flow_fn, "fn", flow_fn))
    extra_rule = getattr(module, "check_parameters", None)
    if callable(extra_rule):
        try:
            extra_rule(checked)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return flow_fn, params.model_dump(mode="json", exclude_unset=True)


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "this flow takes no such parameter"
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {message}" if where else message


def _check_names(keys: list[str] | None, names: list[str] | None) -> None:
    """Refuse an unknown purpose or system (``InvalidInput`` naming the field)."""
    if not keys and not names:
        return
    from consentflow import db, purposes, systems

    with db.session_scope(readonly=True) as session:
        try:
            if keys:
                purposes.info(session, keys)
        except NotFound as exc:
            raise InvalidInput(f"purposes: {exc}") from None
        for system in names or []:
            try:
                systems.get(session, system)
            except NotFound as exc:
                raise InvalidInput(f"systems: {exc}") from None


# --------------------------------------------------------------------------------------------
# Runs on a worker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartedRun:
    """A deployment run as created on the Prefect server (it runs on a worker later)."""

    flow: str
    run_id: str
    deployment: str
    state: str
    ui_url: str | None
    parameters: dict[str, Any]
    requested_by: str
    accepted_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "run_id": self.run_id,
            "deployment": self.deployment,
            "state": self.state,
            "ui_url": self.ui_url,
            "parameters": self.parameters,
            "requested_by": self.requested_by,
            "accepted_at": self.accepted_at.isoformat(),
        }


def prefect_api_url() -> str | None:
    """The Prefect API this process reports to (``PREFECT_API_URL``), or None if unset."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def run_ui_url(run_id: str) -> str | None:
    """The run's page in the Prefect UI: ``prefect_ui_url`` (our setting) or Prefect's own
    ``PREFECT_UI_URL`` (derived from the API's address when unset), or None if neither."""
    from prefect.settings import get_current_settings

    from consentflow.settings import get_settings

    ui = get_settings().prefect_ui_url or get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui else None


def start_deployment_run(
    flow: str,
    values: dict[str, Any],
    requested_by: str,
    deployment: str | None = None,
    *,
    idempotency_key: str | None = None,
) -> StartedRun:
    """Create a run of ``flow``'s deployment on the Prefect server, for a worker to run with
    its own environment, tagged ``requested-by:WHO``; audit ``flow.requested`` at once.

    ``idempotency_key`` (a form's one-time value, say): Prefect answers a second request with
    the same key with the run the first one created, and that run is audited once, so a form
    sent twice starts one run.

    ``values`` are checked first (``prepare_flow``: ``InvalidInput`` naming the field) and only
    those given are sent, so the deployment's own parameter defaults still apply. ``deployment``
    names which one when the flow has several (default: the only one). ``Conflict`` when no
    Prefect server is configured or answering, or it has no such deployment: nothing is created.
    """
    flow_fn, parameters = prepare_flow(flow, values)
    chosen = find_deployment(getattr(flow_fn, "name", flow), deployment)
    import httpx
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        created: Any = run_deployment(
            chosen.id,
            parameters=parameters,
            timeout=0,
            tags=[f"{REQUESTED_BY_TAG}{requested_by}"],
            as_subflow=False,
            idempotency_key=idempotency_key,
        )
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        raise Conflict(f"the Prefect server refused the run: {_one_line(str(exc))}") from None
    run_id = str(created.id)
    started = StartedRun(
        flow=flow,
        run_id=run_id,
        deployment=f"{flow}/{chosen.name}",
        state=str(created.state.name) if created.state else "Scheduled",
        ui_url=run_ui_url(run_id),
        parameters=parameters,
        requested_by=requested_by,
        accepted_at=utcnow(),
    )
    from consentflow import db

    with db.session_scope() as session:
        if idempotency_key is not None and _requested(session, run_id):
            return started  # the same request again: that run is on record already
        audit.record(
            session,
            REQUESTED,
            actor_type=ActorType.AGENT.value,
            actor=requested_by,
            channel=(Channel.API if requested_by.startswith("api:") else Channel.SUPPORT).value,
            run_id=run_id,
            detail=started.as_dict(),
        )
    return started


def _requested(session: Session, run_id: str) -> bool:
    """Whether the run already has its ``flow.requested`` entry."""
    found = session.exec(
        select(AuditEntry.seq).where(AuditEntry.run_id == run_id, AuditEntry.action == REQUESTED)
    ).first()
    return found is not None


def find_deployment(flow: str, name: str | None = None) -> Any:
    """The deployment of ``flow`` on the Prefect server: the one named, or the only one.
    ``Conflict`` when there is no server, it does not answer, or it has no such deployment;
    ``InvalidInput`` when the flow has several and none was named."""
    api = prefect_api_url()
    if not api:
        raise Conflict(
            "no Prefect server is configured (PREFECT_API_URL): a run on a worker needs one"
        )
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow]))
            )
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        raise Conflict(f"the Prefect server at {api} did not answer: {exc}") from None
    names = sorted(d.name for d in found)
    if name is not None:
        found = [d for d in found if d.name == name]
    if not found:
        which = f"{flow}/{name}" if name else f"of {flow}"
        have = f" (it has: {', '.join(names)})" if names else ""
        raise Conflict(
            f"no deployment {which} on the Prefect server{have}: run `consentflow deploy`"
        )
    if len(found) > 1:
        raise InvalidInput(
            f"deployment: {flow} has several deployments ({', '.join(names)}): name one"
        )
    return found[0]

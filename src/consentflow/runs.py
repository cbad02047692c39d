"""What every flow run leaves behind: a summary of counts and one audit entry per run.

Compliance must be able to answer "which run did this, and what else did it do": each item a run
changes carries the run id in its own audit entry (through ``lifecycle.Actor.run_id``), and the run
itself is recorded here with its parameters, counts, outcome and, for an ad-hoc run, who asked for
it. This module knows nothing of Prefect; ``flows/common.py`` fills in the run id and the
requester and publishes the summary as an artifact.

It is also where the CLI and the web app find a flow by its public name: through the
``consentflow.flows`` entry points declared in ``pyproject.toml``, never by importing ``flows``.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from consentflow import audit
from consentflow.errors import InvalidInput, NotFound
from consentflow.models import ActorType, Channel, utcnow


@dataclass
class RunSummary:
    """Counts per (purpose, outcome) of one flow run, plus what is needed to audit it."""

    flow: str
    parameters: dict[str, Any]
    dry_run: bool = False
    run_id: str | None = None
    deployment: str | None = None
    #: Who asked for an ad-hoc run (``api:TOKEN`` through the web API); None for scheduled,
    #: triggered and CLI runs.
    requested_by: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = "running"
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

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
        }


def record_run(session: Session, summary: RunSummary, outcome: str) -> None:
    """Close the summary with ``outcome`` and append the run's audit entry."""
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


# --------------------------------------------------------------------------------------------
# Finding a flow by name
# --------------------------------------------------------------------------------------------

#: The entry-point group the flows are declared in (``pyproject.toml``): name -> flow function.
#: The package never imports the top-level ``flows`` package; it finds each flow through here.
FLOW_ENTRY_POINTS = "consentflow.flows"


def flow_names() -> list[str]:
    """The public names of the flows, e.g. ``expiry-sweep``."""
    return sorted({ep.name for ep in entry_points(group=FLOW_ENTRY_POINTS)})


def load_flow(name: str) -> tuple[Any, type[BaseModel]]:
    """The flow function and its parameter model (the ``Params`` beside it) for a flow name."""
    found = [ep for ep in entry_points(group=FLOW_ENTRY_POINTS) if ep.name == name]
    if not found:
        raise NotFound(f"unknown flow {name!r}: choose one of {', '.join(flow_names())}")
    flow_fn = found[0].load()
    return flow_fn, importlib.import_module(found[0].module).Params


def prepare_flow(name: str, values: dict[str, Any]) -> tuple[Any, BaseModel]:
    """The flow function and its validated parameters, or ``InvalidInput`` naming the problem.

    Checks what the model alone cannot: that the purposes and systems named exist, so a typo is
    refused before a run starts (and before it leaves a failed run in the audit trail).
    """
    from consentflow import db, purposes, systems

    flow_fn, model = load_flow(name)
    try:
        params = model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{where}: {message}" if where else message) from None
    keys, names = getattr(params, "purposes", None), getattr(params, "systems", None)
    if keys or names:
        with db.session_scope() as session:
            if keys:
                purposes.info(session, keys)
            for system in names or []:
                systems.get(session, system)
    return flow_fn, params


#: Who asked for the flow run about to start in this context (``RunSummary.requested_by``).
REQUESTED_BY: ContextVar[str | None] = ContextVar("consentflow_requested_by", default=None)


@contextmanager
def requested_by(who: str | None) -> Iterator[None]:
    """Run a flow inside this block to record who asked for it, e.g. ``api:carol``."""
    reset = REQUESTED_BY.set(who)
    try:
        yield
    finally:
        REQUESTED_BY.reset(reset)

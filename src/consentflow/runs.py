"""What every flow run leaves behind: a summary of counts and one audit entry per run.

Compliance must be able to answer "which run did this, and what else did it do": each item a run
changes carries the run id in its own audit entry (through ``lifecycle.Actor.run_id``), and the run
itself is recorded here with its parameters, counts, outcome and, for an ad-hoc run, who asked for
it. This module knows nothing of Prefect; ``flows/common.py`` fills in the run id and the
requester and publishes the summary as an artifact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from consentflow import audit
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

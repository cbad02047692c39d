"""What one delivery run did: counts per (system, outcome), attempts, and the dead letters.

The engine fills a ``Report`` as each delivery's result is recorded (never per batch), so a run
that is cancelled or fails part-way still reports what it recorded until then when the caller
passes its own ``Report`` in. The propagate flow judges a run by it: ``dead_lettered()`` (what
this run gave up on, per system), ``failing_systems()`` (systems whose every attempt in this run
failed) and ``attempted()`` (attempts made). Systems and ids only: never a person.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from consentflow.delivery.outbox import (
    DEAD,
    DELIVERED,
    DISABLED,
    DUE,
    HELD,
    RETRIED,
    SUPERSEDED,
    Result,
)


@dataclass
class Report:
    """What a run did, per system and outcome, plus the deliveries held back."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead: list[dict[str, Any]] = field(default_factory=list)
    #: Attempts made in this run per system, and how many of them got a 2xx.
    attempts: Counter[str] = field(default_factory=Counter)
    succeeded: Counter[str] = field(default_factory=Counter)

    def add(self, system: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(system, outcome)] += n

    def note(self, result: Result, outcome: str) -> None:
        """One recorded attempt and its outcome."""
        c = result.claimed
        self.add(c.system, outcome)
        self.attempts[c.system] += 1
        if result.ok:
            self.succeeded[c.system] += 1
        if outcome == DEAD:
            self.dead.append(
                {
                    "system": c.system,
                    "webhook_id": c.webhook_id,
                    "id": c.id,
                    "error": result.describe(),
                }
            )

    def extend(self, other: Report) -> None:
        """Add ``other``'s counts, attempts and dead letters to this report (one run's passes)."""
        self.counts.update(other.counts)
        self.dead.extend(other.dead)
        self.attempts.update(other.attempts)
        self.succeeded.update(other.succeeded)

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, o), n in self.counts.items() if outcome is None or o == outcome)

    def attempted(self, system: str | None = None) -> int:
        """Attempts made in this run (of one system, or all)."""
        return self.attempts[system] if system is not None else sum(self.attempts.values())

    def dead_lettered(self) -> dict[str, int]:
        """Deliveries this run dead-lettered, per system."""
        return {s: n for (s, o), n in sorted(self.counts.items()) if o == DEAD}

    def failing_systems(self) -> list[str]:
        """Systems that were attempted in this run and never answered 2xx (sorted)."""
        return sorted(s for s, n in self.attempts.items() if n and not self.succeeded[s])

    def by_system(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (system, outcome), n in sorted(self.counts.items()):
            out.setdefault(system, {})[outcome] = n
        return out

    def table(self) -> list[dict[str, Any]]:
        """One row per endpoint, for the run's artifact."""
        cols = (DELIVERED, RETRIED, DEAD, DISABLED, HELD, SUPERSEDED, DUE)
        return [
            {"endpoint": system, **{c: counts.get(c, 0) for c in cols}}
            for system, counts in self.by_system().items()
        ]

"""What every batch of one sweep run shares: ``SweepContext``, and the shape of a sweep.

A sweep is a plain function ``sweep(ctx, size, cursor) -> Batch``: it handles the next ``size``
due items after ``cursor`` in transactions of its own (see ``_batching``). The context is frozen:
one run builds it once (a flow from its parameters and the settings) and passes the same one to
every batch, so a retried batch sees exactly what the first attempt saw.

Reminder stages are validated by one rule, ``settings.parse_stages``, wherever they come from
(the context, a flow's ``stages`` parameter, ``CONSENTFLOW_REMINDER_STAGES``, which the settings
check when they are read): positive whole days, duplicates merged, kept nearest first. A bad value
is refused with ``ValueError`` before any batch runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from consentflow import settings
from consentflow.settings import get_settings

if TYPE_CHECKING:
    from consentflow.mail import Mailer
    from consentflow.sweeps._batching import Batch


def parse_stages(value: str | Sequence[int] | None) -> tuple[int, ...]:
    """Reminder stages in days, nearest first, by the settings' rule (``settings.parse_stages``);
    ``None`` means ``CONSENTFLOW_REMINDER_STAGES``. Raises ``ValueError`` for a bad value."""
    return settings.parse_stages(get_settings().reminder_stages if value is None else value)


def _default_after_days() -> int:
    return get_settings().followup_after_days


def _default_followup_max() -> int:
    return get_settings().followup_max


def _default_deadline_days() -> int:
    return get_settings().reconsent_deadline_days


@dataclass(frozen=True)
class SweepContext:
    """One run of one or more sweeps: what is due is judged ``as_of``; every item changed and
    every email sent is audited with ``run_id``; ``dry_run`` counts without writing (and needs
    no ``mailer``); ``purposes`` limits the run to those keys (None: all); ``engine`` is the
    database (None: the configured one); ``mailer`` sends the emails of a real run (a sweep that
    sends needs one then, and fails with ``AssertionError`` without it).

    The remaining fields are the email sweeps' policy, defaulting to the settings:
    ``stages`` (renewal reminders, days before the validity ends, checked and ordered by
    ``parse_stages``; None: ``CONSENTFLOW_REMINDER_STAGES``, read by the reminder sweep itself so
    that a bad value there fails only the reminders), ``followup_after_days`` and
    ``followup_max`` (collection follow-ups) and ``reconsent_deadline_days`` (re-consent
    requests).
    """

    as_of: datetime
    run_id: str | None = None
    dry_run: bool = False
    purposes: tuple[str, ...] | None = None
    engine: Engine | None = None
    mailer: Mailer | None = field(default=None, repr=False)
    stages: tuple[int, ...] | None = None
    followup_after_days: int = field(default_factory=_default_after_days)
    followup_max: int = field(default_factory=_default_followup_max)
    reconsent_deadline_days: int = field(default_factory=_default_deadline_days)

    def __post_init__(self) -> None:
        if self.stages is not None:
            object.__setattr__(self, "stages", parse_stages(self.stages))
        if self.purposes is not None:
            object.__setattr__(self, "purposes", tuple(self.purposes))

    @property
    def reminder_stages(self) -> tuple[int, ...]:
        """``stages``, or the settings' stages when None (``ValueError`` if those are bad)."""
        return self.stages if self.stages is not None else parse_stages(None)

    @property
    def purpose_keys(self) -> list[str] | None:
        """``purposes`` as the list the purpose lookups take (None: all purposes)."""
        return None if self.purposes is None else list(self.purposes)


#: The shape of every sweep: one batch of up to ``size`` due items after ``cursor``.
Sweep = Callable[[SweepContext, int, int], "Batch"]

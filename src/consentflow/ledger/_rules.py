"""The rule book: which changes a consent allows, and when a consent has ended.

``RULES`` and ``plan`` are the whole rule book (the only one: nothing else decides whether an
action may happen): from which states each action may start, what it leads to, and how the
validity is stamped. ``plan`` is pure; the single write path (``ledger._write``) writes what it
decides.

``effective_state`` is the one statement of "a given consent whose validity has ended counts as
expired", whether or not a sweep has recorded the expiry yet. Access checks, point-in-time reads
and the write path all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from consentflow.errors import TransitionNotAllowed
from consentflow.models import Action, State
from consentflow.purposes import PurposeInfo
from consentflow.timeutil import iso_seconds

_ENDED = frozenset({None, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.INVALIDATED})


@dataclass(frozen=True)
class Rule:
    """An action may start from ``allowed`` states (None: no consent yet) and leads to ``to``."""

    allowed: frozenset[State | None]
    to: State | None  # None: the caller names the state (import)
    #: What to do instead, shown when the action is refused.
    hint: str


RULES: dict[Action, Rule] = {
    Action.REQUEST: Rule(_ENDED, State.REQUESTED, "there is nothing to ask"),
    Action.GRANT: Rule(_ENDED | {State.REQUESTED}, State.GIVEN, "renew it to extend the validity"),
    Action.REFUSE: Rule(
        _ENDED - {State.REFUSED} | {State.REQUESTED},
        State.REFUSED,
        "revoke it to withdraw a given consent",
    ),
    Action.REVOKE: Rule(frozenset({State.GIVEN}), State.WITHDRAWN, "there is nothing to withdraw"),
    Action.RENEW: Rule(frozenset({State.GIVEN}), State.GIVEN, "grant it again instead"),
    Action.EXPIRE: Rule(frozenset({State.GIVEN}), State.EXPIRED, "only given consents expire"),
    Action.INVALIDATE: Rule(
        frozenset({State.GIVEN}), State.INVALIDATED, "only given consents can be invalidated"
    ),
    Action.IMPORT: Rule(frozenset({None}), None, "the subject already has a consent for it"),
}

#: States an import may bring in from another platform.
IMPORTABLE_STATES = frozenset(
    {State.GIVEN, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.REQUESTED}
)


def has_lapsed(state: State | str | None, valid_until: datetime | None, at: datetime) -> bool:
    """True for a given consent whose validity had ended by ``at`` (expired in fact)."""
    return state == State.GIVEN and valid_until is not None and valid_until <= at


def effective_state(state: State, valid_until: datetime | None, at: datetime) -> State:
    """The state a consent is in at ``at``: a lapsed given consent counts as expired."""
    return State.EXPIRED if has_lapsed(state, valid_until, at) else state


class Current(NamedTuple):
    """A consent as the rules see it (None fields: no consent yet)."""

    state: State | None = None
    purpose_version: int | None = None
    given_at: datetime | None = None
    valid_until: datetime | None = None


class Outcome(NamedTuple):
    """What ``plan`` decided: the consent's new fields and when the change took effect."""

    state: State
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    occurred_at: datetime


def plan(
    action: Action,
    current: Current,
    purpose: PurposeInfo,
    *,
    now: datetime,
    as_of: datetime | None = None,
    imported: Current | None = None,
) -> Outcome:
    """Apply the rules to one consent. Raises ``TransitionNotAllowed`` with the reason.

    ``as_of`` is the instant an expiry is judged at (default ``now``); ``imported`` carries the
    state, version, given_at and valid_until of an imported record.
    """
    rule = RULES[action]
    if current.state not in rule.allowed:
        state = current.state.value if current.state else "absent"
        raise TransitionNotAllowed(f"consent is {state}: {rule.hint}")
    version = purpose.current_version
    if action is Action.GRANT:
        return Outcome(State.GIVEN, version, now, _validity(now, purpose), now)
    if action is Action.RENEW:
        # Renewing confirms the current notice and restarts its validity period.
        return Outcome(State.GIVEN, version, current.given_at, _validity(now, purpose), now)
    if action is Action.EXPIRE:
        return _expire(current, version, as_of=min(as_of or now, now))
    if action is Action.INVALIDATE:
        if (current.purpose_version or 0) >= purpose.material_version:
            raise TransitionNotAllowed(
                f"consent rests on version {current.purpose_version}, which no material "
                f"revision has superseded (latest material version {purpose.material_version})"
            )
        return Outcome(State.INVALIDATED, current.purpose_version or version, None, None, now)
    if action is Action.IMPORT:
        assert imported is not None
        return _import(imported, purpose, now)
    assert rule.to is not None
    if action is Action.REVOKE:  # withdraws what was given, under the notice it was given on
        return Outcome(rule.to, current.purpose_version or version, None, None, now)
    # request, refuse: about the notice the subject is being asked about now
    return Outcome(rule.to, version, None, None, now)


def _expire(current: Current, version: int, *, as_of: datetime) -> Outcome:
    # Judged as of ``as_of`` but never ahead of time (the caller caps it at now): a consent
    # expires once it has ended.
    until = current.valid_until
    if until is None or not has_lapsed(current.state, until, as_of):
        raise TransitionNotAllowed(
            f"consent is valid until {iso_seconds(until)}: not due at {iso_seconds(as_of)}"
        )
    # It expired when its validity ended, whenever the sweep gets round to recording it.
    return Outcome(
        State.EXPIRED, current.purpose_version or version, current.given_at, until, until
    )


def _import(imported: Current, purpose: PurposeInfo, now: datetime) -> Outcome:
    assert imported.state is not None
    # Without a grant date, an expired record counts from its end (never after it).
    fallback = imported.valid_until if imported.state is State.EXPIRED else None
    given_at = imported.given_at or fallback or now
    version = imported.purpose_version or purpose.current_version
    if imported.state in (State.GIVEN, State.EXPIRED):
        valid_until = imported.valid_until or _validity(given_at, purpose)
        return Outcome(imported.state, version, given_at, valid_until, given_at)
    return Outcome(imported.state, version, None, None, given_at)


def _validity(start: datetime, purpose: PurposeInfo) -> datetime:
    return start + timedelta(days=purpose.validity_days)

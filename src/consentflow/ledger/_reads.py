"""Reading consents: now (the current-state table), and as of any past instant (the history).

The ``consent`` table must always equal the replay of ``consent_event`` (``replay``); the
property tests check exactly that. A consent whose validity had ended by the instant asked about
reads as expired (``effective_state``), even if no sweep had recorded it yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlmodel import Session, col, select

from consentflow import subjects
from consentflow.ledger._rules import effective_state
from consentflow.models import Action, Consent, ConsentEvent, Purpose, State


@dataclass(frozen=True)
class ConsentView:
    """A subject's consent for one purpose, now or as of an instant."""

    purpose: str
    state: State
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    event_id: uuid.UUID
    seq: int


def subject_id(session: Session, external_id: str) -> int:
    """The subject's id (``NotFound``: unknown subject, see ``subjects.require``)."""
    found = subjects.require(session, external_id).id
    assert found is not None
    return found


def history(session: Session, external_id: str) -> list[tuple[str, ConsentEvent]]:
    """Every consent event of the subject, with its purpose key, in sequence order."""
    sid = subject_id(session, external_id)
    stmt = (
        select(Purpose.key, ConsentEvent)
        .join(Purpose, col(Purpose.id) == ConsentEvent.purpose_id)
        .where(ConsentEvent.subject_id == sid)
        .order_by(col(ConsentEvent.seq))
    )
    return [(k, e) for k, e in session.exec(stmt).all()]


def replay(events: Iterable[tuple[str, ConsentEvent]]) -> dict[str, ConsentView]:
    """Fold a history into the consent state it implies, per purpose."""
    state: dict[str, ConsentView] = {}
    for key, e in events:
        prev = state.get(key)
        entering = e.state == State.GIVEN and (prev is None or prev.state != State.GIVEN)
        keeps_given_at = e.state in (State.GIVEN, State.EXPIRED)
        if e.action == Action.IMPORT:
            given_at = e.occurred_at if keeps_given_at else None
        elif entering:
            given_at = e.occurred_at
        else:
            given_at = prev.given_at if (prev and keeps_given_at) else None
        state[key] = ConsentView(
            key, State(e.state), e.purpose_version, given_at, e.valid_until, e.id, e.seq
        )
    return state


def current(session: Session, external_id: str) -> list[ConsentView]:
    """The subject's consents now, from the current-state table (one indexed read)."""
    sid = subject_id(session, external_id)
    stmt = (
        select(Purpose.key, Consent, ConsentEvent.seq)
        .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        .join(ConsentEvent, col(ConsentEvent.id) == Consent.last_event_id)
        .where(Consent.subject_id == sid)
        .order_by(col(Purpose.key))
    )
    return [
        ConsentView(
            key,
            State(c.state),
            c.purpose_version,
            c.given_at,
            c.valid_until,
            c.last_event_id,
            seq,
        )
        for key, c, seq in session.exec(stmt).all()
    ]


def as_of(session: Session, external_id: str, at: datetime) -> list[ConsentView]:
    """The subject's consents as they stood at ``at``, replayed from the history.

    Events count from when they took effect; a consent whose validity had ended by ``at`` is
    reported expired even if no sweep had recorded it yet.
    """
    events = [(k, e) for k, e in history(session, external_id) if e.occurred_at <= at]
    views = replay(events)
    return [
        replace(v, state=effective_state(v.state, v.valid_until, at))
        for _, v in sorted(views.items())
    ]

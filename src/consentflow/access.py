"""Purpose-based access checks: may this system use this person's data for this purpose?

One check is one indexed query, built once (``_LOOKUP``): the purpose, the system and its
registration, the subject and the consent row, outer-joined so that whatever is missing says
why the answer is no. Answers come from the current-state table, never from replaying history;
an unknown system is the caller's mistake (``NotFound``), not an answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import Select, Table, and_, bindparam, literal, select
from sqlmodel import Session

from consentflow.errors import NotFound
from consentflow.ledger import effective_state
from consentflow.models import Consent, Purpose, State, Subject, System, SystemPurpose, utcnow


class Reason(StrEnum):
    """Why a check answered as it did (modelled on CAMARA ConsentInfo status reasons)."""

    GIVEN = "given"
    NO_CONSENT = "no_consent"
    REQUESTED = "requested"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    INVALIDATED = "invalidated"
    SYSTEM_NOT_AUTHORISED = "system_not_authorised"
    UNKNOWN_SUBJECT = "unknown_subject"
    UNKNOWN_PURPOSE = "unknown_purpose"


@dataclass(frozen=True)
class Decision:
    """The answer to an access check, with what it relied on."""

    allowed: bool
    reason: Reason
    subject: str
    purpose: str
    system: str | None
    checked_at: datetime
    state: str | None = None
    purpose_version: int | None = None
    valid_until: datetime | None = None
    #: The consent event the answer rests on (the latest change of that consent).
    event_id: uuid.UUID | None = None


class _Found(NamedTuple):
    """The consent row an answer rests on."""

    state: str
    purpose_version: int
    valid_until: datetime | None
    last_event_id: uuid.UUID


def _lookup() -> Select[Any]:
    """Everything one check needs, in one indexed query (built once; the values are bound per
    check): the purpose, the system and its registration for the purpose, the subject and the
    consent, each NULL when there is none."""
    p, y, sp = _table(Purpose), _table(System), _table(SystemPurpose)
    s, c = _table(Subject), _table(Consent)
    one = select(literal(1).label("one")).subquery()
    return select(
        p.c.id.label("purpose_id"),
        y.c.id.label("system_id"),
        sp.c.system_id.label("authorised"),
        s.c.id.label("subject_id"),
        c.c.state,
        c.c.purpose_version,
        c.c.valid_until,
        c.c.last_event_id,
    ).select_from(
        one.outerjoin(p, p.c.key == bindparam("b_purpose"))
        .outerjoin(y, y.c.name == bindparam("b_system"))
        .outerjoin(sp, and_(sp.c.system_id == y.c.id, sp.c.purpose_id == p.c.id))
        .outerjoin(s, s.c.external_id == bindparam("b_subject"))
        .outerjoin(c, and_(c.c.subject_id == s.c.id, c.c.purpose_id == p.c.id))
    )


def _table(model: Any) -> Table:
    found: Table = model.__table__
    return found


_LOOKUP = _lookup()


def check(
    session: Session,
    external_id: str,
    purpose_key: str,
    system: str | None = None,
    *,
    at: datetime | None = None,
) -> Decision:
    """Answer from the current-state table with indexed lookups only (no history replay): one
    query, prepared once.

    A given consent whose validity has ended counts as expired even before the sweep records it.
    An unknown ``system`` raises ``NotFound``: it is a caller's mistake, not an answer.
    """
    now = at or utcnow()

    def answer(reason: Reason, consent: _Found | None = None) -> Decision:
        return Decision(
            allowed=reason is Reason.GIVEN,
            reason=reason,
            subject=external_id,
            purpose=purpose_key,
            system=system,
            checked_at=now,
            state=consent.state if consent else None,
            purpose_version=consent.purpose_version if consent else None,
            valid_until=consent.valid_until if consent else None,
            event_id=consent.last_event_id if consent else None,
        )

    values = {"b_purpose": purpose_key, "b_system": system, "b_subject": external_id}
    row = session.execute(_LOOKUP, values).one()
    if system is not None and row.system_id is None:
        raise NotFound(f"unknown system {system!r}: see `consentflow system list`")
    if row.purpose_id is None:
        return answer(Reason.UNKNOWN_PURPOSE)
    if system is not None and row.authorised is None:
        return answer(Reason.SYSTEM_NOT_AUTHORISED)
    if row.subject_id is None:
        return answer(Reason.UNKNOWN_SUBJECT)
    if row.state is None:
        return answer(Reason.NO_CONSENT)
    consent = _Found(row.state, row.purpose_version, row.valid_until, row.last_event_id)
    return answer(judge(consent.state, consent.valid_until, now), consent)


def judge(state: str, valid_until: datetime | None, at: datetime) -> Reason:
    """The access check's answer for a consent row at ``at``: its ``effective_state`` (a
    lapsed given consent answers "expired"; its stored state stays "given" until swept). The
    one rule, for a single check and for the transfer gate's batches alike."""
    return _REASONS[effective_state(_STATES[state], valid_until, at)]


#: Enum lookups by value, once (a batch judges 10,000 rows).
_STATES = {s.value: s for s in State}
_REASONS = {s: Reason(s.value) for s in State}

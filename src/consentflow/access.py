"""Purpose-based access checks: may this system use this person's data for this purpose?"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, select

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


def check(
    session: Session,
    external_id: str,
    purpose_key: str,
    system: str | None = None,
    *,
    at: datetime | None = None,
) -> Decision:
    """Answer from the current-state table with indexed lookups only (no history replay).

    A given consent whose validity has ended counts as expired even before the sweep records it.
    An unknown ``system`` raises ``NotFound``: it is a caller's mistake, not an answer.
    """
    now = at or utcnow()

    def answer(reason: Reason, consent: Consent | None = None) -> Decision:
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

    purpose_id = session.exec(select(Purpose.id).where(Purpose.key == purpose_key)).first()
    if system is not None:
        system_id = session.exec(select(System.id).where(System.name == system)).first()
        if system_id is None:
            raise NotFound(f"unknown system {system!r}: see `consentflow system list`")
    if purpose_id is None:
        return answer(Reason.UNKNOWN_PURPOSE)
    if system is not None:
        authorised = session.exec(
            select(SystemPurpose.system_id).where(
                SystemPurpose.system_id == system_id, SystemPurpose.purpose_id == purpose_id
            )
        ).first()
        if authorised is None:
            return answer(Reason.SYSTEM_NOT_AUTHORISED)
    subject_id = session.exec(select(Subject.id).where(Subject.external_id == external_id)).first()
    if subject_id is None:
        return answer(Reason.UNKNOWN_SUBJECT)
    consent = session.exec(
        select(Consent).where(Consent.subject_id == subject_id, Consent.purpose_id == purpose_id)
    ).first()
    if consent is None:
        return answer(Reason.NO_CONSENT)
    # A lapsed given consent answers "expired" (its stored state stays "given" until swept).
    return answer(Reason(effective_state(State(consent.state), consent.valid_until, now)), consent)

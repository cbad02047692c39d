"""Output models of the workspace's People pages: a search's matches and a subject's overview.

Built from ``lookup``'s answers (``SubjectMatchOut.of``, ``SubjectOverviewOut.of``). An address
is never part of them (``has_email`` only, as ``SubjectOut``); an erased subject shows as its
tombstone (``erased``: true, no address, no locale, no receipt).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from consentflow.views._base import Name, TextId, View


class SubjectMatchOut(View):
    """One subject a search found, and how the query matched it."""

    external_id: str
    subject_ref: str
    #: ``external_id``, ``email`` or ``subject_ref``.
    matched_by: str
    erased: bool
    has_email: bool
    created_at: datetime
    erased_at: datetime | None

    @classmethod
    def of(cls, match: Any) -> SubjectMatchOut:
        """From a ``lookup.Match``."""
        s = match.subject
        return cls(
            external_id=s.external_id,
            subject_ref=s.subject_ref,
            matched_by=match.matched_by,
            erased=s.erased_at is not None,
            has_email=s.email is not None,
            created_at=s.created_at,
            erased_at=s.erased_at,
        )


class SubjectSearchOut(View):
    matches: list[SubjectMatchOut]


class ConsentNowOut(View):
    """A consent now: ``state`` as stored, ``counts_as`` at the instant of the answer (a given
    consent whose validity ended counts as expired before the sweep records it)."""

    purpose: str
    state: Name
    counts_as: Name
    purpose_version: int
    #: The purpose's notice version now; above ``purpose_version``: a later notice exists.
    current_version: int
    given_at: datetime | None
    valid_until: datetime | None
    updated_at: datetime
    event_id: TextId


class HistoryItemOut(View):
    """One consent event: what changed, who and through which channel, under which notice."""

    event_id: TextId
    seq: int
    purpose: str
    action: Name
    state: Name
    previous_state: Name | None
    purpose_version: int
    occurred_at: datetime
    recorded_at: datetime
    valid_until: datetime | None
    actor_type: Name
    actor: str | None
    channel: Name
    reason: str | None
    run_id: str | None


class OpenRequestOut(View):
    id: int
    purpose: str
    purpose_version: int
    kind: Name
    requested_at: datetime
    deadline: datetime | None
    followups_sent: int
    last_sent_at: datetime | None


class SubjectDeliveryOut(View):
    """One webhook about the subject to one system: when (whether) that system learnt."""

    id: int
    system: str
    event_type: str
    #: The withdrawing event it tells of (None for ``subject.erased``), its sequence number and
    #: purpose.
    event_id: TextId | None
    seq: int | None
    purpose: str | None
    state: Name
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None


class AuditItemOut(View):
    """An audit entry about the subject, with what verifying it found: ``ok``, ``modified`` or
    ``unlinked`` (see ``lookup.verify_entries``)."""

    seq: int
    recorded_at: datetime
    action: str
    purpose_key: str | None
    actor_type: str | None
    actor: str | None
    channel: str | None
    run_id: str | None
    detail: dict[str, Any]
    hash: str
    verified: str


class SubjectOverviewOut(View):
    """Everything the record holds about one subject, as of ``at``."""

    external_id: str
    subject_ref: str
    generation: int
    erased: bool
    erased_at: datetime | None
    has_email: bool
    locale: str | None
    created_at: datetime
    at: datetime
    consents: list[ConsentNowOut]
    #: Newest first.
    history: list[HistoryItemOut]
    open_requests: list[OpenRequestOut]
    #: By system, oldest first.
    deliveries: list[SubjectDeliveryOut]
    #: Oldest first; the newest ``lookup.AUDIT_LIMIT`` when ``audit_truncated``.
    audit: list[AuditItemOut]
    audit_truncated: bool
    #: Every entry shown verified ``ok``.
    audit_ok: bool
    receipt_url: str | None

    @classmethod
    def of(cls, o: Any) -> SubjectOverviewOut:
        """From a ``lookup.Overview``."""
        s = o.subject
        audit = [
            AuditItemOut.model_validate(dict(c.entry._asdict(), verified=c.verified))
            for c in o.audit
        ]
        return cls(
            external_id=s.external_id,
            subject_ref=s.subject_ref,
            generation=s.generation,
            erased=o.erased,
            erased_at=s.erased_at,
            has_email=s.email is not None,
            locale=s.locale,
            created_at=s.created_at,
            at=o.now,
            consents=[ConsentNowOut.model_validate(c) for c in o.consents],
            history=[HistoryItemOut.model_validate(dict(r._mapping)) for r in o.history],
            open_requests=[
                OpenRequestOut.model_validate(
                    {**{n: getattr(r, n) for n in _REQUEST_FIELDS}, "purpose": key}
                )
                for r, key in o.requests
            ],
            deliveries=[SubjectDeliveryOut.model_validate(d) for d in o.deliveries],
            audit=audit,
            audit_truncated=o.audit_truncated,
            audit_ok=all(a.verified == "ok" for a in audit),
            receipt_url=o.receipt_url,
        )


_REQUEST_FIELDS = tuple(set(OpenRequestOut.model_fields) - {"purpose"})

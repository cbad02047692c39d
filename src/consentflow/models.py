"""Every table consentflow stores, and the vocabularies its columns use.

The shape follows an ISO/IEC TS 27560 consent record: a subject, purposes with immutable versioned
notices, the current consent per subject and purpose, and the full append-only history of consent
events (who expressed what, when, through which channel, under which notice version). Around it:
open consent requests, downstream systems with their purposes, the webhook outbox and the
hash-chained audit trail.

Only tables and column types live here; the rules that change them are in ``lifecycle.py``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, DateTime, Index, MetaData, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Deterministic constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC on the way in and on the way out.

    SQLite keeps no time zone, so a naive value read back would silently lose its meaning; this
    type refuses naive values when writing and attaches UTC when reading, on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current instant, timezone-aware UTC (the only kind of datetime consentflow uses)."""
    return datetime.now(UTC)


def _ts(nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


class State(StrEnum):
    """Consent states (the DPV ConsentStatus vocabulary used by ISO/IEC TS 27560)."""

    REQUESTED = "requested"
    GIVEN = "given"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    INVALIDATED = "invalidated"


#: States after which downstream systems must stop processing: these enqueue webhook deliveries.
WITHDRAWING_STATES = frozenset({State.WITHDRAWN, State.EXPIRED, State.INVALIDATED})


class Action(StrEnum):
    """The only ways a consent changes. The rules for each are in ``lifecycle.RULES``."""

    REQUEST = "request"
    GRANT = "grant"
    REFUSE = "refuse"
    REVOKE = "revoke"
    RENEW = "renew"
    EXPIRE = "expire"
    INVALIDATE = "invalidate"
    IMPORT = "import"


class ActorType(StrEnum):
    """Who expressed the change (ISO 27560 'expressed by')."""

    SUBJECT = "subject"
    AGENT = "agent"  # a support agent acting on the subject's behalf
    IMPORT = "import"  # migrated from another consent platform
    SYSTEM = "system"  # consentflow itself: expiry, invalidation


class Channel(StrEnum):
    """How the change reached us (ISO 27560 collection method)."""

    WEB = "web"
    EMAIL_LINK = "email_link"
    SUPPORT = "support"
    API = "api"
    IMPORT = "import"
    SYSTEM = "system"


class LawfulBasis(StrEnum):
    """GDPR Art. 6(1) lawful bases."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class RequestKind(StrEnum):
    COLLECTION = "collection"  # asked for the first time
    RECONSENT = "reconsent"  # asked again after a material notice change


class RequestStatus(StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    LAPSED = "lapsed"


class SystemStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # deliveries are held until resumed
    DISABLED = "disabled"  # deliveries are held until an operator re-enables (e.g. after a 410)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # retries exhausted; kept for replay, never discarded


class Subject(SQLModel, table=True):
    """A person. ``subject_ref`` is the keyed hash that the audit trail uses instead of identity.

    An erased subject (``erasure``) keeps its row, its reference and its history (the proof);
    its ``email`` and ``locale`` are None, its ``external_id`` an irreversible tombstone
    (``~erased-<random hex>``, which the identifier rule can never produce) and ``erased_at`` is
    set.
    """

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(unique=True, max_length=200)
    subject_ref: str = Field(unique=True, max_length=64)
    #: Which registration of this external id the row is: 1, or n + 1 for a person registered
    #: again after n erasures. The reference derives from the external id for the first, from
    #: ``<id>#<generation>`` after that (``subjects.reference``), so each lifetime has its own.
    generation: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    #: Kept only because reminders and follow-ups are sent by email. Indexed: the workspace
    #: finds a person by it (``lookup.search``).
    email: str | None = Field(default=None, max_length=320, index=True)
    #: The person's language tag (``fr``, ``de-AT``); None: not known, so the pages follow the
    #: browser's ``Accept-Language`` (``i18n.negotiate``) and emails use the default language.
    locale: str | None = Field(default=None, max_length=35, nullable=True)
    #: Sequence number of the subject's latest consent event; incremented under a row lock.
    last_seq: int = 0
    created_at: datetime = _ts()
    #: When the person was erased (``erasure.erase``); None while they are not.
    erased_at: datetime | None = _ts(nullable=True)


class SubjectKey(SQLModel, table=True):
    """A subject's data key (``datakeys``): a random Fernet key, itself sealed by ``secretbox``
    (so it re-seals when the instance keys rotate). What must stay in place about an erased
    person (their outbox payloads) is encrypted under it; destroying it (``sealed_key`` None,
    ``destroyed_at`` set) makes all of that unreadable at once: crypto-shredding."""

    __tablename__ = "subject_key"

    subject_id: int = Field(foreign_key="subject.id", primary_key=True)
    sealed_key: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts()
    destroyed_at: datetime | None = _ts(nullable=True)


class Purpose(SQLModel, table=True):
    """A purpose of processing; its notice text lives in immutable ``PurposeVersion`` rows."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    current_version: int = 1
    created_at: datetime = _ts()


class PurposeVersion(SQLModel, table=True):
    """One version of a purpose's notice, exactly as subjects saw it. Never updated."""

    __tablename__ = "purpose_version"
    __table_args__ = (UniqueConstraint("purpose_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    purpose_id: int = Field(foreign_key="purpose.id")
    version: int
    title: str = Field(max_length=200)
    description: str = ""
    lawful_basis: str = Field(default=LawfulBasis.CONSENT, max_length=32)
    data_categories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: The notice in other languages, ``{locale: {"title": ..., "description": ...}}`` (locale
    #: tags lower-case, ``fr`` or ``fr-ca``); ``title`` and ``description`` above are the default
    #: text, shown where a language has none (``purposes.text_for``). Part of the version, so a
    #: translation is published as a new version like any other change of the notice.
    texts: dict[str, dict[str, str]] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    validity_days: int
    #: Whether this version changed the notice materially compared with the previous one, so that
    #: consents resting on earlier versions must be re-confirmed.
    material: bool = False
    created_at: datetime = _ts()


class Consent(SQLModel, table=True):
    """The current consent of one subject for one purpose: a projection of its history."""

    __table_args__ = (
        UniqueConstraint("subject_id", "purpose_id"),
        # The sweep's "given and due" scan, and the dashboard's counts per purpose and state.
        Index("ix_consent_state_valid_until", "state", "valid_until"),
        Index("ix_consent_purpose_id_state_valid_until", "purpose_id", "state", "valid_until"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subject_id: int = Field(foreign_key="subject.id")
    purpose_id: int = Field(foreign_key="purpose.id")
    state: str = Field(max_length=16)
    purpose_version: int
    given_at: datetime | None = _ts(nullable=True)
    valid_until: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts()
    last_event_id: uuid.UUID
    #: Smallest renewal-reminder stage (days before the end) already sent in the current validity
    #: period; reset whenever the validity is stamped anew (grant, renew, import).
    reminder_stage: int | None = None


class ConsentEvent(SQLModel, table=True):
    """One entry of the append-only consent history (an ISO 27560 event)."""

    __tablename__ = "consent_event"
    __table_args__ = (
        UniqueConstraint("subject_id", "seq"),
        Index("ix_consent_event_purpose_id_recorded_at", "purpose_id", "recorded_at"),
        # The dashboard's daily trend reads only this index.
        Index(
            "ix_consent_event_recorded_at_action_purpose_id", "recorded_at", "action", "purpose_id"
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    subject_id: int = Field(foreign_key="subject.id")
    purpose_id: int = Field(foreign_key="purpose.id")
    #: Per-subject sequence number, strictly increasing: receivers use it to drop stale events.
    seq: int
    action: str = Field(max_length=16)
    state: str = Field(max_length=16)
    previous_state: str | None = Field(default=None, max_length=16)
    purpose_version: int
    #: When the change took effect (for an expiry: the validity end).
    occurred_at: datetime = _ts()
    #: When the ledger recorded it.
    recorded_at: datetime = _ts()
    valid_until: datetime | None = _ts(nullable=True)
    actor_type: str = Field(max_length=16)
    #: Who acted, where it matters: the agent's name, the importing source, the flow run.
    actor: str | None = Field(default=None, max_length=200)
    channel: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=500)
    #: Optional proof (IP address, user agent, form id): off unless the caller supplies it.
    evidence: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    run_id: str | None = Field(default=None, max_length=64)


class ConsentRequest(SQLModel, table=True):
    """A question put to a subject and not yet answered (collection or re-consent)."""

    __tablename__ = "consent_request"
    __table_args__ = (Index("ix_consent_request_status_kind", "status", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    subject_id: int = Field(foreign_key="subject.id", index=True)
    purpose_id: int = Field(foreign_key="purpose.id")
    purpose_version: int
    kind: str = Field(max_length=16)
    status: str = Field(default=RequestStatus.OPEN, max_length=16)
    requested_at: datetime = _ts()
    deadline: datetime | None = _ts(nullable=True)
    followups_sent: int = 0
    last_sent_at: datetime | None = _ts(nullable=True)
    closed_at: datetime | None = _ts(nullable=True)


class System(SQLModel, table=True):
    """A downstream system that processes personal data for some purposes."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    #: The name people see on their preference page ("who receives it"); None: ``name``.
    display_name: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2000)
    #: Standard Webhooks secret (``whsec_...``), shown once at registration.
    webhook_secret: str | None = Field(default=None, max_length=200)
    #: The secret before the last rotation; it signs alongside the new one until it retires.
    previous_secret: str | None = Field(default=None, max_length=200)
    previous_secret_until: datetime | None = _ts(nullable=True)
    status: str = Field(default=SystemStatus.ACTIVE, max_length=16)
    status_reason: str | None = Field(default=None, max_length=500)
    last_success_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    #: One more at every change staff act on (its status, a replay of its deliveries): a
    #: workspace form carries the revision it was shown with and acts only if it still holds.
    revision: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class SystemPurpose(SQLModel, table=True):
    """Which purposes a system is authorised to process (granular access control)."""

    __tablename__ = "system_purpose"

    system_id: int = Field(foreign_key="system.id", primary_key=True)
    purpose_id: int = Field(foreign_key="purpose.id", primary_key=True)


class Delivery(SQLModel, table=True):
    """The transactional outbox: one webhook to send to one system about one withdrawing event,
    or (``subject.erased``) about one erased subject: exactly one of ``event_id`` and
    ``erasure_subject_id`` is set.

    Written in the same transaction as the consent change, so a committed withdrawal is always
    delivered and a rolled-back one never is. The body is serialised once, here, and sent byte for
    byte on every attempt. The bodies about an erased subject are kept sealed under their data
    key (``datakeys.SEALED``), opened when claimed.
    """

    __table_args__ = (
        UniqueConstraint("system_id", "event_id"),
        UniqueConstraint("erasure_subject_id", "system_id"),
        CheckConstraint("(event_id IS NULL) <> (erasure_subject_id IS NULL)", name="one_target"),
        Index("ix_delivery_state_next_attempt_at", "state", "next_attempt_at"),
        # The undelivered queue by endpoint without reading rows (``reports.metrics``).
        Index(
            "ix_delivery_state_system_id_attempts_created_at",
            "state",
            "system_id",
            "attempts",
            "created_at",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    system_id: int = Field(foreign_key="system.id")
    event_id: uuid.UUID | None = Field(default=None, foreign_key="consent_event.id", index=True)
    #: The erased subject a ``subject.erased`` delivery is about (None for consent events).
    erasure_subject_id: int | None = Field(default=None, foreign_key="subject.id")
    webhook_id: str = Field(unique=True, max_length=64)
    event_type: str = Field(max_length=40)
    payload: str
    state: str = Field(default=DeliveryState.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts()
    leased_until: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=500)


class DeliveryAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery: what a regulator asks for ("when did each system learn?")."""

    __tablename__ = "delivery_attempt"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id", index=True)
    attempt: int
    started_at: datetime = _ts()
    status_code: int | None = None
    latency_ms: int | None = None
    error_class: str | None = Field(default=None, max_length=100)
    #: The start of the response body, truncated; never request headers (they carry signatures).
    response_excerpt: str | None = Field(default=None, max_length=500)


class EmailMessage(SQLModel, table=True):
    """One consent email: its Message-ID and outcome. The address itself stays on the subject."""

    __tablename__ = "email_message"
    __table_args__ = (Index("ix_email_message_subject_id_kind", "subject_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=200)
    subject_id: int = Field(foreign_key="subject.id")
    purpose_id: int | None = Field(default=None, foreign_key="purpose.id")
    request_id: int | None = Field(default=None, foreign_key="consent_request.id")
    #: renewal_reminder, collection_followup, reconsent_request, alert ...
    kind: str = Field(max_length=32)
    stage: int | None = None
    #: claimed (about to be sent), sent, deferred (4xx/timeout), bounced (5xx)
    status: str = Field(max_length=16)
    run_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)
    error: str | None = Field(default=None, max_length=500)


class EmailSuppression(SQLModel, table=True):
    """Addresses that must not be mailed again (hard bounces, complaints), kept as keyed hashes."""

    __tablename__ = "email_suppression"

    address_hash: str = Field(primary_key=True, max_length=64)
    reason: str = Field(max_length=500)
    created_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    """A bearer token for the web API; only its hash is stored."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    #: admin, compliance, support or system
    scope: str = Field(max_length=16)
    system_id: int | None = Field(default=None, foreign_key="system.id")
    token_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = _ts()
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class WebSession(SQLModel, table=True):
    """A browser sign-in. The cookie carries a random id; only its SHA-256 hash is stored, so
    neither a database dump nor this table is enough to present a session. A session counts only
    while it is not revoked, not expired (``expires_at``, enforced by the server) and its token
    is active: signing out or revoking the token ends it at once."""

    __tablename__ = "web_session"

    id: int | None = Field(default=None, primary_key=True)
    id_hash: str = Field(unique=True, max_length=64)
    token_id: int = Field(foreign_key="api_token.id", index=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts(index=True)
    last_seen_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)


class AuditEntry(SQLModel, table=True):
    """One link of the tamper-evident audit chain. See ``audit.py`` for how it is hashed."""

    __tablename__ = "audit_entry"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    recorded_at: datetime = _ts(index=True)
    action: str = Field(max_length=40, index=True)
    subject_ref: str | None = Field(default=None, max_length=64, index=True)
    purpose_key: str | None = Field(default=None, max_length=64)
    actor_type: str | None = Field(default=None, max_length=16)
    actor: str | None = Field(default=None, max_length=200)
    channel: str | None = Field(default=None, max_length=16)
    run_id: str | None = Field(default=None, max_length=64, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's tip. Its row lock serialises appends; verify checks the chain ends here."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(max_length=64)

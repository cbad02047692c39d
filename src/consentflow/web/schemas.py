"""Request and response bodies of the API (they make up the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from consentflow.models import Channel, LawfulBasis

# Printable text without control characters (PostgreSQL refuses NUL; nothing needs the others).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(pattern=_PRINTABLE)]
PurposeKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
SystemName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
Title = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
Description = Annotated[str, StringConstraints(max_length=10000)]
Categories = Annotated[list[Annotated[Text, Field(max_length=100)]], Field(max_length=50)]
#: At most 90 characters: the ledger records ``ACTOR via api:TOKEN`` in 200 (token names: 100).
ActorName = Annotated[str, StringConstraints(min_length=1, max_length=90, pattern=_PRINTABLE)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_PRINTABLE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------- errors


class FieldError(BaseModel):
    field: str
    location: str
    message: str


class Error(BaseModel):
    """Every 4xx answer: one line for people, and the offending fields for a 422."""

    detail: str
    errors: list[FieldError] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No token, or an unknown or revoked one"},
    403: {"model": Error, "description": "The token's scope does not allow this"},
    422: {"model": Error, "description": "Bad input; the message names the field"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "Unknown subject, purpose, system or delivery"}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Error, "description": "The lifecycle rules refuse it, or it exists already"}
}


# ----------------------------------------------------------------------------------- basics


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class Me(BaseModel):
    name: str
    scope: str
    system: str | None


# --------------------------------------------------------------------------------- purposes


class PurposeVersionOut(BaseModel):
    key: str
    version: int
    title: str
    description: str
    lawful_basis: str
    data_categories: list[str]
    validity_days: int
    material: bool
    created_at: datetime


class PurposeOut(BaseModel):
    key: str
    current_version: int
    #: The newest material version: consents on older versions must be re-confirmed.
    material_version: int
    notice: PurposeVersionOut
    systems: list[str]


class PurposeDetail(PurposeOut):
    versions: list[PurposeVersionOut]


class PurposeIn(Strict):
    key: PurposeKey
    title: Title
    validity_days: Annotated[int, Field(ge=1, le=36500)]
    description: Description = ""
    lawful_basis: LawfulBasis = LawfulBasis.CONSENT
    data_categories: Categories = []


class RevisionIn(Strict):
    material: bool
    title: Title | None = None
    description: Description | None = None
    lawful_basis: LawfulBasis | None = None
    data_categories: Categories | None = None
    validity_days: Annotated[int, Field(ge=1, le=36500)] | None = None


class SystemOut(BaseModel):
    name: str
    purposes: list[str]
    webhook_url: str | None
    status: str


# --------------------------------------------------------------------------------- subjects


class SubjectIn(Strict):
    external_id: ExternalId
    email: Annotated[str, StringConstraints(max_length=320, pattern=_PRINTABLE)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35, pattern=_PRINTABLE)] | None = None


class ConsentOut(BaseModel):
    purpose: str
    state: str
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    event_id: str
    seq: int


class SubjectOut(BaseModel):
    external_id: str
    subject_ref: str
    locale: str
    has_email: bool
    created_at: datetime
    consents: list[ConsentOut]


class ConsentsOut(BaseModel):
    subject: str
    #: The instant the state is reported for (None: now, from the current-state table).
    at: datetime | None
    consents: list[ConsentOut]


class EventOut(BaseModel):
    event_id: str
    purpose: str
    seq: int
    action: str
    state: str
    previous_state: str | None
    purpose_version: int
    occurred_at: datetime
    recorded_at: datetime
    valid_until: datetime | None
    actor_type: str
    actor: str | None
    channel: str
    reason: str | None
    run_id: str | None


class HistoryOut(BaseModel):
    subject: str
    events: list[EventOut]


ChangeAction = Literal["request", "grant", "refuse", "revoke", "renew"]


#: Channels only our own pages record: a link in an email, the preference page.
PAGE_CHANNELS = frozenset({Channel.EMAIL_LINK.value, Channel.WEB.value})


class ChangeIn(Strict):
    """Who expressed the change and how it reached us.

    Admin tokens say so themselves (default: the subject, through the API); the token is
    recorded with the change whatever the body says. Support tokens always act as an agent
    named after the token, through the support channel, and must give a reason. ``email_link``
    and ``web`` are not accepted here: only the signed-link and preference pages record them.
    """

    channel: Literal["api", "support"] = "api"
    actor_type: Literal["subject", "agent"] = "subject"
    actor: ActorName | None = None
    reason: Reason | None = None

    @field_validator("channel", mode="before")
    @classmethod
    def _not_a_page_channel(cls, value: object) -> object:
        if isinstance(value, str) and value in PAGE_CHANNELS:
            raise ValueError(
                f"{value!r} is recorded only by the signed-link and preference pages; "
                "use 'api' or 'support'"
            )
        return value


class ChangeOut(BaseModel):
    event_id: str
    subject: str
    purpose: str
    purpose_version: int
    seq: int
    action: str
    previous_state: str | None
    state: str
    occurred_at: datetime
    recorded_at: datetime
    valid_until: datetime | None
    deliveries: int


class RequestOut(BaseModel):
    id: int
    subject: str
    purpose: str
    purpose_version: int
    kind: str
    status: str
    requested_at: datetime
    deadline: datetime | None
    followups_sent: int
    last_sent_at: datetime | None
    closed_at: datetime | None


class RequestsOut(BaseModel):
    items: list[RequestOut]
    #: Pass as ``after`` for the next page; None when this is the last page.
    next: int | None


# ------------------------------------------------------------------------- check and feed


class DecisionOut(BaseModel):
    allowed: bool
    reason: str
    subject: str
    purpose: str
    system: str | None
    state: str | None
    purpose_version: int | None
    valid_until: datetime | None
    #: The consent event the answer relies on.
    event_id: str | None
    checked_at: datetime


class FeedData(BaseModel):
    subject: str
    purpose: str
    purpose_version: int
    state: str
    effective_at: str
    event_id: str
    sequence: int


class FeedItemOut(BaseModel):
    cursor: int
    type: str
    data: FeedData


class FeedOut(BaseModel):
    system: str
    items: list[FeedItemOut]
    #: Resume from here (the last item's cursor, or the cursor asked for when nothing is new).
    next_cursor: int


# ---------------------------------------------------------------------------------- delivery


class DeliveryOut(BaseModel):
    id: int
    system: str
    webhook_id: str
    event_id: str
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int | None
    error_class: str | None
    response_excerpt: str | None


class DeliveryDetail(DeliveryOut):
    payload: str
    attempts_log: list[AttemptOut]


class DeliveriesOut(BaseModel):
    items: list[DeliveryOut]
    next: int | None


class HealthRow(BaseModel):
    system: str
    status: str
    status_reason: str | None
    #: Active, nothing dead, nothing retrying.
    ok: bool
    #: Withdrawals not yet delivered; ``held`` of them wait because the system is not active.
    pending: int
    held: int
    #: Pending after at least one failed attempt.
    retrying: int
    #: Retries exhausted; kept for replay.
    dead: int
    delivered: int
    oldest_undelivered_at: datetime | None
    #: Age in seconds of the oldest withdrawal the system has not yet received.
    oldest_undelivered_age_s: int | None
    failures_24h: int
    last_success_at: datetime | None


class ReplayOut(BaseModel):
    replayed: int
    ids: list[int]


# ---------------------------------------------------------------------------------------- runs


class RunAccepted(BaseModel):
    flow: str
    parameters: dict[str, Any]
    accepted_at: datetime
    #: Who asked for the run (``api:TOKEN``), as the run's audit entry records it.
    requested_by: str
    status: Literal["accepted"] = "accepted"


# --------------------------------------------------------------------------------------- audit


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    head: str
    first_bad: int | None
    problem: str | None
    #: Whether the consent history matches the chain (checked when the chain is intact).
    history_ok: bool
    history_problem: str | None

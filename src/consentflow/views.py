"""The output vocabulary of both doors: one Pydantic model per object consentflow shows.

The API uses these as ``response_model`` (re-exported by ``consentflow.web.schemas``, which keeps
the input and error models); the CLI prints ``model_dump(mode="json")`` of the same models for
``--json``. So one object has one set of field names whichever door shows it, and a test
(``tests/test_views.py``) runs both doors on one database and compares them.

Invariants:

- Models are built from domain objects (``from_attributes``: the services' dataclasses and the
  SQLModel rows; an ``of`` constructor where a field comes from elsewhere), never from dicts a
  door assembles; they hold no logic beyond renaming and shaping. Ids are strings in JSON (a
  UUID is accepted and turned into its text).
- Times are aware UTC and written as ISO 8601 with ``Z`` (Pydantic's JSON form, the same as
  ``timeutil.iso_z``).
- A field renamed to agree with the other door keeps its old name as a deprecated output alias
  for one release, on the CLI only, through ``cli_json``: the alias is listed in the model's
  ``deprecated_aliases`` and in ``docs/changelog.md``.

Models here never validate input; input models live with the door that reads them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _text_id(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


def _enum_value(value: object) -> object:
    return getattr(value, "value", value)


#: An id written as text (a UUID from a domain object becomes its canonical string).
TextId = Annotated[str, BeforeValidator(_text_id)]
#: A state, action or other enumerated name, written as its value.
Name = Annotated[str, BeforeValidator(_enum_value)]


class View(BaseModel):
    """Base of every output model: built from attributes or dicts; old names listed for the CLI."""

    model_config = ConfigDict(from_attributes=True)

    #: Deprecated output names the CLI still writes for one release: ``{old: new}``.
    deprecated_aliases: ClassVar[dict[str, str]] = {}


def cli_json(view: BaseModel | Iterable[BaseModel]) -> Any:
    """What the CLI prints for ``--json``: the view's JSON form, plus its deprecated aliases."""
    if isinstance(view, BaseModel):
        data = view.model_dump(mode="json")
        for old, new in getattr(view, "deprecated_aliases", {}).items():
            data[old] = data[new]
        return data
    return [cli_json(v) for v in view]


# ----------------------------------------------------------------------------------- basics


class Health(View):
    status: Literal["ok"]
    database: Literal["ok"]


class Me(View):
    name: str
    scope: Name
    system: str | None


class Revision(View):
    """The schema revision the database is at (``db upgrade``)."""

    revision: str | None


# --------------------------------------------------------------------------------- purposes


class PurposeVersionOut(View):
    key: str
    version: int
    title: str
    description: str
    #: ``{locale: {title?, description?}}``; a missing one falls back to title / description.
    texts: dict[str, dict[str, str]] = {}
    lawful_basis: Name
    data_categories: list[str]
    validity_days: int
    material: bool
    created_at: datetime

    @classmethod
    def of(cls, key: str, version: Any) -> PurposeVersionOut:
        """From a purpose key and one of its ``models.PurposeVersion`` rows."""
        own = set(cls.model_fields) - {"key"}
        return cls(key=key, **{name: getattr(version, name) for name in own})


class PurposeOut(View):
    key: str
    current_version: int
    #: The newest material version: consents on older versions must be re-confirmed.
    material_version: int
    notice: PurposeVersionOut
    systems: list[str]


class PurposeDetail(PurposeOut):
    versions: list[PurposeVersionOut]


# ---------------------------------------------------------------------------------- systems


class SystemOut(View):
    name: str
    display_name: str  # shown to people; the name when none was given
    purposes: list[str]
    webhook_url: str | None
    status: Name


class SystemCreated(View):
    """A registered system with its webhook secret, shown this once."""

    name: str
    webhook_url: str | None
    webhook_secret: str | None


class SystemStatusOut(View):
    """An endpoint after pause / resume / disable / enable, with its pending deliveries."""

    name: str
    status: Name
    reason: str | None
    pending: int


class SecretRotated(View):
    name: str
    webhook_secret: str
    grace_hours: float


# --------------------------------------------------------------------------------- subjects


class ConsentOut(View):
    purpose: str
    state: Name
    purpose_version: int
    given_at: datetime | None
    valid_until: datetime | None
    event_id: TextId
    seq: int


class SubjectOut(View):
    external_id: str
    subject_ref: str
    #: None: no language recorded (pages follow the browser's, emails are in English).
    locale: str | None
    has_email: bool
    created_at: datetime
    consents: list[ConsentOut]

    @classmethod
    def of(cls, subject: Any, consents: Iterable[Any]) -> SubjectOut:
        """From a ``models.Subject`` row and its ``lifecycle.ConsentView`` list."""
        return cls(
            external_id=subject.external_id,
            subject_ref=subject.subject_ref,
            locale=subject.locale,
            has_email=subject.email is not None,
            created_at=subject.created_at,
            consents=[ConsentOut.model_validate(c) for c in consents],
        )


class ConsentsOut(View):
    subject: str
    #: The instant the state is reported for (None: now, from the current-state table).
    at: datetime | None
    consents: list[ConsentOut]

    deprecated_aliases: ClassVar[dict[str, str]] = {"as_of": "at"}


class EventOut(View):
    event_id: TextId
    purpose: str
    seq: int
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

    @classmethod
    def of(cls, purpose: str, event: Any) -> EventOut:
        """From one ``(purpose key, models.ConsentEvent)`` pair of ``lifecycle.history``."""
        own = set(cls.model_fields) - {"event_id", "purpose"}
        fields = {name: getattr(event, name) for name in own}
        return cls(**{**fields, "event_id": event.id, "purpose": purpose})


class HistoryOut(View):
    subject: str
    events: list[EventOut]


class ChangeOut(View):
    event_id: TextId
    subject: str
    purpose: str
    purpose_version: int
    seq: int
    action: Name
    previous_state: Name | None
    state: Name
    occurred_at: datetime
    recorded_at: datetime
    valid_until: datetime | None
    deliveries: int

    @classmethod
    def of(cls, change: Any) -> ChangeOut:
        """From a ``lifecycle.Change`` (whose subject is its ``external_id``)."""
        own = set(cls.model_fields) - {"subject"}
        return cls(subject=change.external_id, **{name: getattr(change, name) for name in own})


class RequestOut(View):
    id: int
    subject: str
    purpose: str
    purpose_version: int
    kind: Name
    status: Name
    requested_at: datetime
    deadline: datetime | None
    followups_sent: int
    last_sent_at: datetime | None
    closed_at: datetime | None

    @classmethod
    def of(cls, request: Any, subject: str, purpose: str) -> RequestOut:
        """From a ``models.ConsentRequest`` row with its subject's external id and purpose key."""
        own = set(cls.model_fields) - {"subject", "purpose"}
        fields = {name: getattr(request, name) for name in own}
        return cls(subject=subject, purpose=purpose, **fields)


class RequestsOut(View):
    items: list[RequestOut]
    #: Pass as ``after`` for the next page; None when this is the last page.
    next: int | None


class ImportErrorOut(View):
    line: int
    error: str


class ImportReportOut(View):
    """What a bulk import did (``subject import``)."""

    import_id: str
    rows: int
    subjects_created: int
    consents_created: int
    unchanged: int
    bad_rows: list[ImportErrorOut]

    @classmethod
    def of(cls, report: Any) -> ImportReportOut:
        """From an ``importer.Report`` (its ``errors`` are the bad rows)."""
        return cls(
            import_id=report.import_id,
            rows=report.rows,
            subjects_created=report.subjects_created,
            consents_created=report.consents_created,
            unchanged=report.unchanged,
            bad_rows=[ImportErrorOut(line=e.line, error=e.message) for e in report.errors],
        )


# ------------------------------------------------------------------------- check and feed


class DecisionOut(View):
    allowed: bool
    reason: Name
    subject: str
    purpose: str
    system: str | None
    state: Name | None
    purpose_version: int | None
    valid_until: datetime | None
    #: The consent event the answer relies on.
    event_id: TextId | None
    checked_at: datetime


class FeedData(View):
    subject: str
    purpose: str
    purpose_version: int
    state: Name
    effective_at: str
    event_id: TextId
    sequence: int


class FeedItemOut(View):
    cursor: int
    type: str
    data: FeedData

    @classmethod
    def of(cls, item: Any) -> FeedItemOut:
        """From a ``feed.FeedItem`` (flat) into the webhook body's shape."""
        return cls(cursor=item.cursor, type=item.type, data=FeedData.model_validate(item))


class FeedOut(View):
    system: str
    items: list[FeedItemOut]
    #: Resume from here (the last item's cursor, or the cursor asked for when nothing is new).
    next_cursor: int


# ---------------------------------------------------------------------------------- delivery


class DeliveryOut(View):
    id: int
    system: str
    webhook_id: str
    event_id: TextId
    event_type: str
    state: Name
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    #: The purpose the withdrawal concerns.
    purpose: str
    #: Pending but held because its system is paused or disabled.
    held: bool

    deprecated_aliases: ClassVar[dict[str, str]] = {"type": "event_type"}


class AttemptOut(View):
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int | None
    error_class: str | None
    response_excerpt: str | None


class DeliveryDetail(DeliveryOut):
    payload: str
    attempts_log: list[AttemptOut]

    deprecated_aliases: ClassVar[dict[str, str]] = {
        "type": "event_type",
        "attempt_log": "attempts_log",
    }


class DeliveriesOut(View):
    items: list[DeliveryOut]
    next: int | None


class Redelivered(View):
    """How many undelivered deliveries were queued again (``deliveries redeliver``)."""

    queued: int
    since: datetime
    system: str | None


class HealthRow(View):
    system: str
    status: Name
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


class ReplayOut(View):
    replayed: int
    ids: list[int]


# -------------------------------------------------------------------------------------- tokens


class TokenOut(View):
    """An API token as listed (never the token itself)."""

    name: str
    scope: Name
    system: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(View):
    """A new token: who it is for, and the token, printed this once."""

    name: str
    scope: Name
    system: str | None
    token: str


class TokenRevoked(View):
    name: str
    revoked: int


# --------------------------------------------------------------------------------------- audit


class VerifyOut(View):
    ok: bool
    entries: int
    head: str
    first_bad: int | None
    problem: str | None
    #: Whether the consent history matches the chain (checked when the chain is intact).
    history_ok: bool
    history_problem: str | None
    #: Every fault found, one line each (empty when the record verifies).
    findings: list[str] = []


# ---------------------------------------------------------------------------------------- links


class LinkOut(View):
    """A signed link issued for a person (``consentflow link``, ``POST /subjects/{id}/links``):
    hand it over by another channel; whoever holds it can act until ``expires_at``."""

    subject: str
    action: Name
    purpose: str | None
    url: str
    expires_at: datetime


# ----------------------------------------------------------------------------------------- keys


class KeyOut(View):
    """One instance key, by fingerprint (``keys.fingerprint``): never the key."""

    fingerprint: str
    signs: bool
    reference: bool


class KeysOut(View):
    """``consentflow keys list``: the keys newest first, the reference key, sealed values."""

    source: str
    key_file: str | None
    reference: str
    reference_pinned: bool
    keys: list[KeyOut]
    sealed_current: int
    sealed_older: int
    unreadable: str | None
    rotation_pending: bool
    last_rotated_at: datetime | None


class KeyRotationOut(View):
    """``consentflow keys rotate``: fingerprints only, and how many values were re-sealed."""

    generated: bool
    recorded: bool
    signing: str
    keys: list[str]
    reference: str
    resealed: int
    key_file: str | None


# -------------------------------------------------------------------------------------- erasure


class ErasureOut(View):
    """What an erasure did (``consentflow subject erase``, ``POST /subjects/{id}/erase``): from
    now on the person is named only by ``subject_ref``."""

    subject_ref: str
    erased_at: datetime
    #: The purposes whose consent it withdrew, and those found ended (expired instead).
    withdrawn: list[str]
    expired: list[str]
    #: The systems sent a ``subject.erased`` webhook.
    notified: list[str]
    #: Webhooks enqueued: the withdrawals' and the ``subject.erased`` ones.
    deliveries: int
    #: Consent events whose evidence was removed (the chain keeps its keyed digest).
    evidence_removed: int

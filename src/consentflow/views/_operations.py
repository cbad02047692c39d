"""Output models: deliveries, tokens, audit, links, keys and erasure."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from consentflow.views._base import Name, TextId, View

# ---------------------------------------------------------------------------------- delivery


class DeliveryOut(View):
    id: int
    system: str
    webhook_id: str
    #: The consent event it tells of; None for a ``subject.erased`` delivery (about a person).
    event_id: TextId | None
    event_type: str
    state: Name
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    #: The purpose the withdrawal concerns (None for a ``subject.erased`` delivery).
    purpose: str | None
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
    #: The verdict's condition is ``healthy`` (``delivery.health.judge``).
    ok: bool
    #: The worst of: never succeeded, failing, dead letters, held, old undelivered; or healthy.
    condition: str
    #: critical, warning or ok.
    severity: str
    #: Every condition found, worst first, with its figures.
    problems: list[str]
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
    findings: list[str] = Field(default_factory=list)


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

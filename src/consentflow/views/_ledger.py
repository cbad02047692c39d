"""Output models: subjects, consents, history, requests, imports, the access check and feed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar

from consentflow.views._base import Name, TextId, View

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

"""The API's input and error models; its output models live in ``consentflow.views``.

The output models (``SubjectOut``, ``DeliveryDetail``, ...) are shared with the CLI's ``--json``
so the two doors cannot drift; they are re-exported here so the routes keep importing every
model of the OpenAPI schema from one place. Input models forbid unknown fields (``Strict``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from consentflow import subjects
from consentflow.models import Channel, LawfulBasis
from consentflow.views import (
    AttemptOut,
    ChangeOut,
    ConsentOut,
    ConsentsOut,
    DecisionOut,
    DeliveriesOut,
    DeliveryDetail,
    DeliveryOut,
    EventOut,
    FeedData,
    FeedItemOut,
    FeedOut,
    Health,
    HealthRow,
    HistoryOut,
    Me,
    PurposeDetail,
    PurposeOut,
    PurposeVersionOut,
    ReplayOut,
    RequestOut,
    RequestsOut,
    SubjectOut,
    SystemOut,
    VerifyOut,
    View,
)

# Printable text without control characters (PostgreSQL refuses NUL; nothing needs the others).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, StringConstraints(pattern=_PRINTABLE)]
PurposeKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
#: The one identifier rule (``subjects.check_external_id``), shown in OpenAPI.
ExternalId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=subjects.MAX_EXTERNAL_ID, pattern=subjects.EXTERNAL_ID_PATTERN
    ),
]
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


# ------------------------------------------------------------------------------------- runs


class RunAccepted(View):
    """A flow run created on the Prefect server, for a worker to run (``POST /api/v1/runs``)."""

    flow: str
    #: The Prefect flow run's id; its end entry in the audit trail carries the same run id.
    run_id: str
    #: ``FLOW/DEPLOYMENT``, whose worker runs it with its own environment.
    deployment: str
    #: Prefect's state when created (``Scheduled``).
    state: str
    #: The run's page in the Prefect UI (``prefect_ui_url`` or Prefect's ``PREFECT_UI_URL``).
    ui_url: str | None
    #: The parameters given, validated (the deployment's defaults apply to the others).
    parameters: dict[str, Any]
    #: Who asked for the run (``api:TOKEN``): the run's tag, ``flow.requested`` and end entry.
    requested_by: str
    accepted_at: datetime
    status: Literal["accepted"] = "accepted"


# --------------------------------------------------------------------------------- purposes


#: A language tag (``fr``, ``fr-CA``); stored lower-case.
LocaleTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")]


class LocalTextIn(Strict):
    """A notice's text in one language; a field left out falls back to the default text."""

    title: Title | None = None
    description: Description | None = None


#: The notice in other languages: ``{"fr": {"title": ..., "description": ...}}``.
Texts = Annotated[
    dict[Annotated[LocaleTag, Field(max_length=35)], LocalTextIn], Field(max_length=50)
]


def texts_arg(texts: dict[str, LocalTextIn] | None) -> dict[str, dict[str, str]] | None:
    """``texts`` as the purposes service takes them (fields left out stay out)."""
    if texts is None:
        return None
    return {tag: text.model_dump(exclude_none=True) for tag, text in texts.items()}


class PurposeIn(Strict):
    key: PurposeKey
    title: Title
    validity_days: Annotated[int, Field(ge=1, le=36500)]
    description: Description = ""
    lawful_basis: LawfulBasis = LawfulBasis.CONSENT
    data_categories: Categories = []
    texts: Texts = {}


class RevisionIn(Strict):
    """Only the fields given change; ``texts`` add or change translations (a new version too)."""

    material: bool
    title: Title | None = None
    description: Description | None = None
    lawful_basis: LawfulBasis | None = None
    data_categories: Categories | None = None
    validity_days: Annotated[int, Field(ge=1, le=36500)] | None = None
    texts: Texts | None = None


# --------------------------------------------------------------------------------- subjects


class SubjectIn(Strict):
    external_id: ExternalId
    email: Annotated[str, StringConstraints(max_length=320, pattern=_PRINTABLE)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35, pattern=_PRINTABLE)] | None = None


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


__all__ = [
    "CONFLICT",
    "ERRORS",
    "NOT_FOUND",
    "PAGE_CHANNELS",
    "ActorName",
    "AttemptOut",
    "Categories",
    "ChangeAction",
    "ChangeIn",
    "ChangeOut",
    "ConsentOut",
    "ConsentsOut",
    "DecisionOut",
    "DeliveriesOut",
    "DeliveryDetail",
    "DeliveryOut",
    "Description",
    "Error",
    "EventOut",
    "ExternalId",
    "FeedData",
    "FeedItemOut",
    "FeedOut",
    "FieldError",
    "Health",
    "HealthRow",
    "HistoryOut",
    "LocalTextIn",
    "LocaleTag",
    "Me",
    "PurposeDetail",
    "PurposeIn",
    "PurposeKey",
    "PurposeOut",
    "PurposeVersionOut",
    "Reason",
    "ReplayOut",
    "RequestOut",
    "RequestsOut",
    "RevisionIn",
    "RunAccepted",
    "Strict",
    "SubjectIn",
    "SubjectOut",
    "SystemName",
    "SystemOut",
    "Text",
    "Texts",
    "Title",
    "VerifyOut",
    "texts_arg",
]

"""Subjects: register one, read it with its consents (now or at an instant), its history and its
receipt (``consentflow.receipt``: ISO/IEC TS 27560, or Kantara v1.1 with ``?format=kantara``);
issue a signed link for one (support).

``POST /subjects/{subject}/links`` answers the link itself (a support agent hands it over by
another channel); the audit trail records which token issued it (``link.issued``), never the
token of the link. It changes no consent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query

from consentflow import erasure, lifecycle, link_requests, receipt, subjects
from consentflow.lifecycle import Actor
from consentflow.models import ActorType, Channel
from consentflow.tokens import TokenInfo
from consentflow.views import ErasureOut, LinkOut
from consentflow.web.api._params import SubjectPath, When, api_actor, resource_router, utc
from consentflow.web.auth import ACT, ADMIN, READ, DbSession, ReadSession
from consentflow.web.schemas import (
    CONFLICT,
    NOT_FOUND,
    ConsentOut,
    ConsentsOut,
    EventOut,
    HistoryOut,
    PurposeKey,
    Reason,
    Strict,
    SubjectIn,
    SubjectOut,
)

router = resource_router(["subjects"])

ReceiptFormat = Annotated[
    Literal["iso", "kantara"],
    Query(
        description="`iso`: ISO/IEC TS 27560 (JSON-LD with the DPV vocabulary); `kantara`: "
        "Kantara Consent Receipt v1.1"
    ),
]


def _subject_out(session: DbSession, external_id: str) -> SubjectOut:
    subject = subjects.require(session, external_id)
    return SubjectOut.of(subject, lifecycle.current(session, external_id))


@router.post("/subjects", response_model=SubjectOut, status_code=201, responses=CONFLICT)
def add_subject(
    body: SubjectIn, session: DbSession, caller: Annotated[TokenInfo, Depends(ACT)]
) -> SubjectOut:
    """Register a person (only an optional email and a locale are kept)."""
    who = Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))
    subject = subjects.add(
        session, body.external_id, email=body.email, locale=body.locale, actor=who
    )
    return _subject_out(session, subject.external_id)


@router.get("/subjects/{subject}", response_model=SubjectOut, responses=NOT_FOUND)
def get_subject(
    subject: SubjectPath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> SubjectOut:
    """A subject and its consents now."""
    return _subject_out(session, subject)


@router.get(
    "/subjects/{subject}/consents",
    response_model=ConsentsOut,
    responses=NOT_FOUND,
)
def subject_consents(
    subject: SubjectPath,
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
    at: When = None,
) -> ConsentsOut:
    """The subject's consents now, or as they stood at a past instant (``at``)."""
    when = utc(at, "at")
    views = lifecycle.as_of(session, subject, when) if when else lifecycle.current(session, subject)
    consents = [ConsentOut.model_validate(v) for v in views]
    return ConsentsOut(subject=subject, at=when, consents=consents)


@router.get(
    "/subjects/{subject}/history",
    response_model=HistoryOut,
    responses=NOT_FOUND,
)
def subject_history(
    subject: SubjectPath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> HistoryOut:
    """Every consent event of the subject, in sequence order."""
    events = [EventOut.of(key, e) for key, e in lifecycle.history(session, subject)]
    return HistoryOut(subject=subject, events=events)


@router.get(
    "/subjects/{subject}/receipt",
    response_model=dict[str, Any],
    responses=NOT_FOUND,
)
def subject_receipt(
    subject: SubjectPath,
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
    format: ReceiptFormat = "iso",
) -> dict[str, Any]:
    """The subject's consent receipt: ISO/IEC TS 27560 as the W3C DPV guide gives it (JSON-LD,
    the whole record; the default) or the Kantara Consent Receipt v1.1 (the consents given now).
    See docs/receipts.md."""
    return receipt.build(session, subject, format)


class LinkIn(Strict):
    """Which link to issue: ``renew`` and ``grant`` need a purpose, ``preferences`` and
    ``erase`` (the person confirms their erasure on its page) take none, ``revoke`` without one
    withdraws every consent."""

    action: Literal["preferences", "renew", "revoke", "grant", "erase"]
    purpose: PurposeKey | None = None


@router.post(
    "/subjects/{subject}/links",
    response_model=LinkOut,
    status_code=201,
    responses=NOT_FOUND,
)
def issue_link(
    subject: SubjectPath,
    body: LinkIn,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ACT)],
) -> LinkOut:
    """A signed link for the subject, to send by another channel; the audit trail records the
    calling token (``link.issued``)."""
    who = Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))
    issued = link_requests.issue_for(session, subject, body.action, body.purpose, actor=who)
    return LinkOut.model_validate(issued)


class ErasureIn(Strict):
    """Why the person is erased (e.g. the request's reference): kept in the audit trail for
    good, so no email address and not the person's id."""

    reason: Reason


@router.post(
    "/subjects/{subject}/erase",
    response_model=ErasureOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def erase_subject(
    subject: SubjectPath,
    body: ErasureIn,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ADMIN)],
) -> ErasureOut:
    """Erase the person (admin only; docs/erasure.md): every given consent withdrawn and
    propagated, a ``subject.erased`` webhook to every system that may hold their data, their
    id, contact data and evidence gone; the pseudonymous history stays. 409 if already erased
    or if ``audit verify`` fails."""
    who = Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))
    return erasure.erase(session, subject, who, reason=body.reason)

"""Finding a person and their whole record (support, compliance, admin; ``lookup``).

``GET /subjects?q=`` answers the subjects an external id, an email address or a subject
reference names (exact matches; 404 "no such subject" when none does, 422 naming ``q`` when the
query cannot name anybody). ``GET /subjects/{subject}/overview`` answers everything the record
holds about one subject (external id, or an erased subject's tombstone): consents now with their
validity, history, open requests, deliveries per system, the audit entries about them each
verified, and the receipt's URL. A system token may not read people (403), as for
``GET /subjects/{subject}``. Neither answer holds an email address.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from consentflow import lookup, subjects
from consentflow.tokens import TokenInfo
from consentflow.views import SubjectMatchOut, SubjectOverviewOut, SubjectSearchOut
from consentflow.web.api._params import resource_router
from consentflow.web.auth import READ, ReadSession
from consentflow.web.schemas import NOT_FOUND

router = resource_router(["subjects"])

SearchQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=lookup.MAX_QUERY,
        description="An external id, an email address or a subject reference (exact)",
        examples=["alice"],
    ),
]
#: An external id (the identifier rule) or an erased subject's tombstone.
SubjectOrTombstone = Annotated[
    str,
    Path(
        min_length=1,
        max_length=subjects.MAX_EXTERNAL_ID,
        pattern=f"{subjects.EXTERNAL_ID_PATTERN}|{lookup.TOMBSTONE_PATTERN}",
        description="The subject's external id, or an erased subject's tombstone",
        examples=["alice"],
    ),
]


@router.get("/subjects", response_model=SubjectSearchOut, responses=NOT_FOUND)
def search_subjects(
    q: SearchQuery, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> SubjectSearchOut:
    """The subjects ``q`` names: by external id (with the erased earlier registrations of that
    id), by email address, or by subject reference."""
    return SubjectSearchOut(matches=[SubjectMatchOut.of(m) for m in lookup.search(session, q)])


@router.get("/subjects/{subject}/overview", response_model=SubjectOverviewOut, responses=NOT_FOUND)
def subject_overview(
    subject: SubjectOrTombstone,
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
) -> SubjectOverviewOut:
    """Everything the record holds about the subject, with each audit entry verified."""
    return SubjectOverviewOut.of(lookup.overview(session, subject))

"""The audit trail: verify the hash chain (and the history against it), export entries as JSON
Lines."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.responses import StreamingResponse

from consentflow import audit, integrity, subjects
from consentflow.tokens import TokenInfo
from consentflow.web.api._params import SubjectFilter, When, resource_router, utc
from consentflow.web.auth import COMPLIANCE, ReadSession
from consentflow.web.schemas import NOT_FOUND, VerifyOut

router = resource_router(["audit"])


@router.get("/audit/verify", response_model=VerifyOut)
def audit_verify(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    expect: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}:[0-9a-f]{64}$", description="An anchor SEQ:HASH"),
    ] = None,
) -> dict[str, Any]:
    """Walk the hash chain, then check the consent history against it; ``ok`` false names the
    first fault (``first_bad``/``problem`` for the chain, ``history_problem`` for the history)."""
    anchor = None
    if expect is not None:
        seq, _sep, digest = expect.partition(":")
        anchor = (int(seq), digest)
    return integrity.check(session, expect=anchor)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": "Audit entries as JSON Lines, oldest first, with their hashes",
        },
        **NOT_FOUND,
    },
)
def audit_export(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    subject: SubjectFilter = None,
    since: When = None,
    until: When = None,
) -> StreamingResponse:
    """Audit entries as JSON Lines (filter by subject and time), each re-checkable."""
    start, end = utc(since, "since"), utc(until, "until")
    ref = subjects.require(session, subject).subject_ref if subject is not None else None
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", encoding="utf-8")  # noqa: SIM115
    audit.export(session, spool, subject_ref=ref, since=start, until=end)
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        try:
            while block := spool.read(64 << 10):
                yield block.encode()
        finally:
            spool.close()

    return StreamingResponse(chunks(), media_type="application/x-ndjson")

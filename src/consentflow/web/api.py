"""The JSON API under /api/v1: thin over the service functions.

Each route authenticates (``Depends(Require(...))``), calls one service function inside the
request's single transaction and shapes the answer; the rules live in the service. Expected failures
(``ConsentflowError``) become 4xx answers in ``app.py``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlmodel import col, select

from consentflow import (
    access,
    audit,
    feed,
    integrity,
    lifecycle,
    purposes,
    receipt,
    subjects,
    systems,
)
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    Channel,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Purpose,
    RequestKind,
    RequestStatus,
    Subject,
    System,
    SystemPurpose,
)
from consentflow.tokens import Scope, TokenInfo
from consentflow.web import delivery_ops
from consentflow.web.auth import (
    ACT,
    ADMIN,
    ANY,
    CHECK,
    COMPLIANCE,
    FEED,
    READ,
    AuthError,
    DbSession,
    ReadSession,
)
from consentflow.web.schemas import (
    _PRINTABLE,
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    ChangeAction,
    ChangeIn,
    ChangeOut,
    ConsentsOut,
    DecisionOut,
    DeliveriesOut,
    DeliveryDetail,
    Error,
    FeedOut,
    Health,
    HealthRow,
    HistoryOut,
    Me,
    PurposeDetail,
    PurposeIn,
    PurposeOut,
    ReplayOut,
    RequestsOut,
    RevisionIn,
    RunAccepted,
    SubjectIn,
    SubjectOut,
    SystemOut,
    VerifyOut,
)

router = APIRouter(prefix="/api/v1", responses=ERRORS)

MAX_ID = 2**31 - 1
MAX_CURSOR = 2**63 - 1

_SUBJECT = {"min_length": 1, "max_length": 200, "pattern": _PRINTABLE, "examples": ["alice"]}
_SYSTEM = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", "examples": ["crm"]}
SubjectPath = Annotated[str, Path(description="The subject's external id", **_SUBJECT)]
PurposePath = Annotated[
    str,
    Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="The purpose key", examples=["news"]),
]
SystemPath = Annotated[str, Path(**_SYSTEM)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, examples=[1])]
SubjectQuery = Annotated[str, Query(**_SUBJECT)]
PurposeQuery = Annotated[
    str, Query(min_length=1, max_length=64, pattern=_PRINTABLE, examples=["news"])
]
SystemQuery = Annotated[str | None, Query(**_SYSTEM)]
After = Annotated[int, Query(ge=0, le=MAX_ID, description="Return items after this id")]
Limit = Annotated[int, Query(ge=1, le=1000)]
When = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z; without a zone: UTC",
        json_schema_extra={"format": "date-time"},
    ),
]


def _utc(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 instant, aware UTC; a bad one is a 422 that names the field."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput(
            f"{field}: not an ISO 8601 instant (e.g. 2026-01-31T12:00:00Z): {value[:40]!r}"
        ) from None


# ------------------------------------------------------------------------------------ basics


@router.get("/health", response_model=Health, tags=["meta"])
def health(session: ReadSession) -> dict[str, str]:
    """Liveness and database reachability; needs no token."""
    session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok"}


@router.get("/me", response_model=Me, tags=["meta"])
def me(caller: Annotated[TokenInfo, Depends(ANY.reading)]) -> dict[str, Any]:
    """The token's name, scope and system."""
    return caller.as_dict()


# ---------------------------------------------------------------------------------- purposes


def _purpose_dicts(session: DbSession, key: str | None = None) -> list[dict[str, Any]]:
    current = purposes.list_current(session)
    if key is not None:
        current = [(k, v) for k, v in current if k == key]
        if not current:
            raise NotFound(f"unknown purpose {key!r}")
    infos = purposes.info(session, [k for k, _ in current])
    names: dict[str, list[str]] = {}
    for k, name in session.exec(
        select(Purpose.key, System.name)
        .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .order_by(col(System.name))
    ).all():
        names.setdefault(k, []).append(name)
    return [
        {
            "key": k,
            "current_version": v.version,
            "material_version": infos[k].material_version,
            "notice": purposes.version_dict(k, v),
            "systems": names.get(k, []),
        }
        for k, v in current
    ]


@router.get("/purposes", response_model=list[PurposeOut], tags=["purposes"])
def list_purposes(
    session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> list[dict[str, Any]]:
    """Every purpose with its current notice and the systems registered for it."""
    return _purpose_dicts(session)


@router.get("/purposes/{key}", response_model=PurposeDetail, responses=NOT_FOUND, tags=["purposes"])
def get_purpose(
    key: PurposePath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> dict[str, Any]:
    """One purpose with every version of its notice, oldest first."""
    (found,) = _purpose_dicts(session, key)
    found["versions"] = [purposes.version_dict(k, v) for k, v in purposes.versions(session, key)]
    return found


@router.post(
    "/purposes",
    response_model=PurposeDetail,
    status_code=201,
    responses=CONFLICT,
    tags=["purposes"],
)
def add_purpose(
    body: PurposeIn, session: DbSession, _: Annotated[TokenInfo, Depends(ADMIN)]
) -> dict[str, Any]:
    """Register a purpose with its first notice version."""
    purposes.add(
        session,
        body.key,
        title=body.title,
        validity_days=body.validity_days,
        description=body.description,
        lawful_basis=body.lawful_basis.value,
        data_categories=list(body.data_categories),
    )
    return get_purpose(body.key, session, _)


@router.post(
    "/purposes/{key}/versions",
    response_model=PurposeDetail,
    status_code=201,
    responses={**NOT_FOUND, **CONFLICT},
    tags=["purposes"],
)
def revise_purpose(
    key: PurposePath,
    body: RevisionIn,
    session: DbSession,
    _: Annotated[TokenInfo, Depends(ADMIN)],
) -> dict[str, Any]:
    """Publish a new notice version; ``material`` means consents must be re-confirmed."""
    purposes.revise(
        session,
        key,
        material=body.material,
        title=body.title,
        description=body.description,
        lawful_basis=body.lawful_basis.value if body.lawful_basis else None,
        data_categories=list(body.data_categories) if body.data_categories is not None else None,
        validity_days=body.validity_days,
    )
    return get_purpose(key, session, _)


@router.get("/systems", response_model=list[SystemOut], tags=["systems"])
def list_systems(
    session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> list[dict[str, Any]]:
    """Downstream systems and the purposes each may process."""
    return [s.as_dict() for s in systems.list_all(session)]


# ---------------------------------------------------------------------------------- subjects


def _subject_out(session: DbSession, external_id: str) -> dict[str, Any]:
    subject = subjects.get(session, external_id)
    if subject is None:
        raise NotFound(f"unknown subject {external_id!r}")
    return {
        "external_id": subject.external_id,
        "subject_ref": subject.subject_ref,
        "locale": subject.locale,
        "has_email": subject.email is not None,
        "created_at": subject.created_at,
        "consents": [v.as_dict() for v in lifecycle.current(session, external_id)],
    }


@router.post(
    "/subjects", response_model=SubjectOut, status_code=201, responses=CONFLICT, tags=["subjects"]
)
def add_subject(
    body: SubjectIn, session: DbSession, caller: Annotated[TokenInfo, Depends(ACT)]
) -> dict[str, Any]:
    """Register a person (only an optional email and a locale are kept)."""
    who = Actor(ActorType.AGENT, Channel.API, name=api_actor(caller))
    subject = subjects.add(
        session, body.external_id, email=body.email, locale=body.locale, actor=who
    )
    return _subject_out(session, subject.external_id)


@router.get(
    "/subjects/{subject}", response_model=SubjectOut, responses=NOT_FOUND, tags=["subjects"]
)
def get_subject(
    subject: SubjectPath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> dict[str, Any]:
    """A subject and its consents now."""
    return _subject_out(session, subject)


@router.get(
    "/subjects/{subject}/consents",
    response_model=ConsentsOut,
    responses=NOT_FOUND,
    tags=["subjects"],
)
def subject_consents(
    subject: SubjectPath,
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
    at: When = None,
) -> dict[str, Any]:
    """The subject's consents now, or as they stood at a past instant (``at``)."""
    when = _utc(at, "at")
    views = lifecycle.as_of(session, subject, when) if when else lifecycle.current(session, subject)
    return {"subject": subject, "at": when, "consents": [v.as_dict() for v in views]}


@router.get(
    "/subjects/{subject}/history",
    response_model=HistoryOut,
    responses=NOT_FOUND,
    tags=["subjects"],
)
def subject_history(
    subject: SubjectPath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> dict[str, Any]:
    """Every consent event of the subject, in sequence order."""
    events = [
        {
            "event_id": str(e.id),
            "purpose": key,
            "seq": e.seq,
            "action": e.action,
            "state": e.state,
            "previous_state": e.previous_state,
            "purpose_version": e.purpose_version,
            "occurred_at": e.occurred_at,
            "recorded_at": e.recorded_at,
            "valid_until": e.valid_until,
            "actor_type": e.actor_type,
            "actor": e.actor,
            "channel": e.channel,
            "reason": e.reason,
            "run_id": e.run_id,
        }
        for key, e in lifecycle.history(session, subject)
    ]
    return {"subject": subject, "events": events}


@router.get(
    "/subjects/{subject}/receipt",
    response_model=dict[str, Any],
    responses=NOT_FOUND,
    tags=["subjects"],
)
def subject_receipt(
    subject: SubjectPath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> dict[str, Any]:
    """The subject's consent record as an ISO/IEC TS 27560 receipt (JSON)."""
    return receipt.build(session, subject)


def api_actor(caller: TokenInfo, named: str | None = None) -> str:
    """Who the ledger records for a change made through the API: always the calling token,
    ``api:TOKEN``, after the actor the caller names (``ACTOR via api:TOKEN``) if any. The
    ``actor`` column is what the hash-chained audit entry carries, so the token is there too."""
    via = f"api:{caller.name}"
    return f"{named} via {via}" if named else via


def provenance(caller: TokenInfo) -> dict[str, Any]:
    """The evidence every change through the API carries: the token that made it."""
    return {"via_token": caller.name}


_CHANGES = {
    "request": lifecycle.request,
    "grant": lifecycle.grant,
    "refuse": lifecycle.refuse,
    "revoke": lifecycle.revoke,
    "renew": lifecycle.renew,
}


@router.post(
    "/subjects/{subject}/consents/{purpose}/{action}",
    response_model=ChangeOut,
    responses={**NOT_FOUND, **CONFLICT},
    tags=["consents"],
)
def change_consent(
    subject: SubjectPath,
    purpose: PurposePath,
    action: ChangeAction,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ACT)],
    body: Annotated[ChangeIn | None, Body()] = None,
) -> dict[str, Any]:
    """Record a consent change: request, grant, refuse, revoke or renew.

    Every change names the calling token (see ``provenance``): in ``actor`` (``api:TOKEN``,
    or ``ACTOR via api:TOKEN`` when the body names an actor) and as ``{"via_token": TOKEN}``
    in the event's evidence. Support tokens act as an agent named after the token, through the
    support channel, and must give a ``reason``. The channels ``email_link`` and ``web`` are
    refused (422): only the signed-link and preference pages record those.
    """
    body = body or ChangeIn()
    if caller.scope is Scope.SUPPORT:
        if not body.reason:
            raise InvalidInput("reason: required when a support agent acts for a subject")
        actor = Actor(
            ActorType.AGENT,
            Channel.SUPPORT,
            name=caller.name,
            reason=body.reason,
            evidence=provenance(caller),
        )
    else:
        actor = Actor(
            ActorType(body.actor_type),
            Channel(body.channel),
            name=api_actor(caller, body.actor),
            reason=body.reason,
            evidence=provenance(caller),
        )
    return _CHANGES[action](session, subject, purpose, actor).as_dict()


@router.get("/requests", response_model=RequestsOut, tags=["consents"])
def list_requests(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(READ.reading)],
    status: RequestStatus | None = None,
    kind: RequestKind | None = None,
    purpose: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None,
    subject: Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE)] = None,
    after: After = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Consent requests (collection and re-consent), oldest first, a page at a time."""
    stmt = (
        select(ConsentRequest, Subject.external_id, Purpose.key)
        .join(Subject, col(Subject.id) == ConsentRequest.subject_id)
        .join(Purpose, col(Purpose.id) == ConsentRequest.purpose_id)
        .where(col(ConsentRequest.id) > after)
    )
    if status is not None:
        stmt = stmt.where(ConsentRequest.status == status.value)
    if kind is not None:
        stmt = stmt.where(ConsentRequest.kind == kind.value)
    if purpose is not None:
        stmt = stmt.where(Purpose.key == purpose)
    if subject is not None:
        stmt = stmt.where(Subject.external_id == subject)
    rows = session.exec(stmt.order_by(col(ConsentRequest.id)).limit(limit + 1)).all()
    items = [
        {
            "id": r.id,
            "subject": ext,
            "purpose": key,
            "purpose_version": r.purpose_version,
            "kind": r.kind,
            "status": r.status,
            "requested_at": r.requested_at,
            "deadline": r.deadline,
            "followups_sent": r.followups_sent,
            "last_sent_at": r.last_sent_at,
            "closed_at": r.closed_at,
        }
        for r, ext, key in rows[:limit]
    ]
    return {"items": items, "next": items[-1]["id"] if len(rows) > limit else None}


# ---------------------------------------------------------------------- access check and feed


def _own_system(caller: TokenInfo, system: str | None) -> str | None:
    """A system token may only speak for its own system."""
    if caller.scope is not Scope.SYSTEM:
        return system
    if system is not None and system != caller.system:
        raise AuthError(403, f"this token speaks for system {caller.system!r} only")
    return caller.system


@router.get("/check", response_model=DecisionOut, responses=NOT_FOUND, tags=["access"])
def check(
    subject: SubjectQuery,
    purpose: PurposeQuery,
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(CHECK.reading)],
    system: SystemQuery = None,
) -> dict[str, Any]:
    """May ``system`` use this subject's data for ``purpose``? An indexed lookup, explained:
    ``allowed``, a ``reason`` code, the validity end and the consent event relied on.

    A system token checks for its own system (``system`` may be left out).
    """
    system = _own_system(caller, system)
    return access.check(session, subject, purpose, system).as_dict()


@router.get("/feed", response_model=FeedOut, responses=NOT_FOUND, tags=["access"])
def withdrawal_feed(
    session: ReadSession,
    caller: Annotated[TokenInfo, Depends(FEED.reading)],
    system: SystemQuery = None,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Withdrawals (revoked, expired, invalidated) for the system's purposes after ``cursor``.

    Resume from ``next_cursor``; items mirror the webhook body. A system token reads its own feed.
    """
    name = _own_system(caller, system)
    if name is None:
        raise InvalidInput("system: required (the system whose feed to read)")
    items = feed.withdrawals_since(session, name, cursor, limit)
    return {
        "system": name,
        "items": [i.as_dict() for i in items],
        "next_cursor": items[-1].cursor if items else cursor,
    }


# ---------------------------------------------------------------------------------- delivery


def _delivery_dict(d: Delivery, system: str) -> dict[str, Any]:
    return {
        "id": d.id,
        "system": system,
        "webhook_id": d.webhook_id,
        "event_id": str(d.event_id),
        "event_type": d.event_type,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
        "last_status": d.last_status,
        "last_error": d.last_error,
    }


@router.get("/deliveries", response_model=DeliveriesOut, tags=["delivery"])
def list_deliveries(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    system: SystemQuery = None,
    state: DeliveryState | None = None,
    after: After = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Webhook deliveries (the outbox), oldest first, a page at a time."""
    stmt = (
        select(Delivery, System.name)
        .join(System, col(System.id) == Delivery.system_id)
        .where(col(Delivery.id) > after)
    )
    if system is not None:
        stmt = stmt.where(System.name == system)
    if state is not None:
        stmt = stmt.where(Delivery.state == state.value)
    rows = session.exec(stmt.order_by(col(Delivery.id)).limit(limit + 1)).all()
    items = [_delivery_dict(d, name) for d, name in rows[:limit]]
    return {"items": items, "next": items[-1]["id"] if len(rows) > limit else None}


@router.get("/deliveries/health", response_model=list[HealthRow], tags=["delivery"])
def delivery_health(
    session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> list[dict[str, Any]]:
    """Per downstream system with a webhook: pending withdrawals (and held), the oldest one's
    age, retrying and dead deliveries, failures over 24 hours, and the endpoint's status."""
    return [delivery_ops.health_dict(h) for h in delivery_ops.health(session)]


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    responses=NOT_FOUND,
    tags=["delivery"],
)
def get_delivery(
    delivery_id: IdPath, session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> dict[str, Any]:
    """One delivery with its payload and every attempt."""
    row = session.exec(
        select(Delivery, System.name)
        .join(System, col(System.id) == Delivery.system_id)
        .where(Delivery.id == delivery_id)
    ).first()
    if row is None:
        raise NotFound(f"unknown delivery {delivery_id}")
    delivery, name = row
    attempts = session.exec(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == delivery_id)
        .order_by(col(DeliveryAttempt.attempt))
    ).all()
    return {
        **_delivery_dict(delivery, name),
        "payload": delivery.payload,
        "attempts_log": [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error_class": a.error_class,
                "response_excerpt": a.response_excerpt,
            }
            for a in attempts
        ],
    }


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=ReplayOut,
    responses=NOT_FOUND,
    tags=["delivery"],
)
def replay_delivery(
    delivery_id: IdPath, session: DbSession, caller: Annotated[TokenInfo, Depends(ADMIN)]
) -> dict[str, Any]:
    """Send one delivery again (same webhook id, fresh signature), whatever its state."""
    ids = delivery_ops.replay(session, [delivery_id], actor=caller.name)
    return {"replayed": len(ids), "ids": ids}


@router.post(
    "/systems/{name}/replay", response_model=ReplayOut, responses=NOT_FOUND, tags=["delivery"]
)
def replay_dead(
    name: SystemPath,
    session: DbSession,
    caller: Annotated[TokenInfo, Depends(ADMIN)],
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Send a system's dead letters again (oldest first, up to ``limit``)."""
    ids = delivery_ops.replay(
        session, delivery_ops.dead_ids(session, name, limit), actor=caller.name
    )
    return {"replayed": len(ids), "ids": ids}


# -------------------------------------------------------------------------------------- runs

FlowPath = Annotated[
    str,
    Path(pattern=r"^[a-z][a-z-]{0,63}$", description="A flow, e.g. expiry-sweep", examples=["x"]),
]


@router.post(
    "/runs/{flow}",
    status_code=202,
    response_model=RunAccepted,
    responses={
        **NOT_FOUND,
        409: {"model": Error, "description": "No Prefect server configured (PREFECT_API_URL)"},
    },
    tags=["runs"],
)
def start_run(
    flow: FlowPath,
    caller: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    parameters: Annotated[
        dict[str, Any],
        Body(
            description="The flow's parameters, as in the Prefect UI form (e.g. "
            '{"dry_run": true, "as_of": "2026-12-31T23:59:59Z"}).',
        ),
    ],
) -> dict[str, Any]:
    """Start a lifecycle flow now (compliance's ad-hoc sweep), in the background.

    The parameters are validated first (422 naming the field). The run needs a Prefect server
    (``PREFECT_API_URL``): without one the answer is 409, since the web process must not start
    a temporary server of its own. The run then goes on after the answer, reported to that
    server, and leaves its audit entries like any run, with ``requested_by`` naming the token
    (the latest runs are on the dashboard).
    """
    import threading

    from consentflow import runs

    flow_fn, params = runs.prepare_flow(flow, parameters)
    if not prefect_api_url():
        raise Conflict(
            "no Prefect server is configured: set PREFECT_API_URL for the web app to start runs"
        )
    who = api_actor(caller)

    def run() -> None:
        with runs.requested_by(who):
            flow_fn(params)

    threading.Thread(target=run, name=f"run-{flow}", daemon=True).start()
    return {
        "flow": flow,
        "parameters": params.model_dump(mode="json"),
        "accepted_at": datetime.now(UTC),
        "requested_by": who,
    }


def prefect_api_url() -> str | None:
    """The Prefect API the process reports to (``PREFECT_API_URL``), or None if unset."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


# ------------------------------------------------------------------------------------- audit


@router.get("/audit/verify", response_model=VerifyOut, tags=["audit"])
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
    tags=["audit"],
)
def audit_export(
    session: ReadSession,
    _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)],
    subject: Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE)] = None,
    since: When = None,
    until: When = None,
) -> StreamingResponse:
    """Audit entries as JSON Lines (filter by subject and time), each re-checkable."""
    start, end = _utc(since, "since"), _utc(until, "until")
    ref = None
    if subject is not None:
        found = subjects.get(session, subject)
        if found is None:
            raise NotFound(f"unknown subject {subject!r}")
        ref = found.subject_ref
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

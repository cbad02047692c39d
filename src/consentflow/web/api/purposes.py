"""Purposes and their notice versions (read by compliance and support, changed by admin), and the
list of downstream systems with the purposes each may process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from consentflow import purposes, reports, systems
from consentflow.actors import Actor
from consentflow.errors import NotFound
from consentflow.models import ActorType, Channel
from consentflow.tokens import TokenInfo
from consentflow.web.api._params import PurposePath, api_actor, resource_router
from consentflow.web.auth import ADMIN, COMPLIANCE, READ, DbSession, ReadSession
from consentflow.web.schemas import (
    CONFLICT,
    NOT_FOUND,
    PurposeDetail,
    PurposeIn,
    PurposeOut,
    PurposeVersionOut,
    RevisionIn,
    SystemOut,
    texts_arg,
)

router = resource_router()


def _purposes(session: DbSession, key: str | None = None) -> list[PurposeOut]:
    current = purposes.list_current(session)
    if key is not None:
        current = [(k, v) for k, v in current if k == key]
        if not current:
            raise NotFound(f"unknown purpose {key!r}")
    infos = purposes.info(session, [k for k, _ in current])
    names = reports.purpose_systems(session)
    return [
        PurposeOut(
            key=k,
            current_version=v.version,
            material_version=infos[k].material_version,
            notice=PurposeVersionOut.of(k, v),
            systems=names.get(k, []),
        )
        for k, v in current
    ]


@router.get("/purposes", response_model=list[PurposeOut], tags=["purposes"])
def list_purposes(
    session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> list[PurposeOut]:
    """Every purpose with its current notice and the systems registered for it."""
    return _purposes(session)


@router.get("/purposes/{key}", response_model=PurposeDetail, responses=NOT_FOUND, tags=["purposes"])
def get_purpose(
    key: PurposePath, session: ReadSession, _: Annotated[TokenInfo, Depends(READ.reading)]
) -> PurposeDetail:
    """One purpose with every version of its notice, oldest first."""
    (found,) = _purposes(session, key)
    versions = [PurposeVersionOut.of(k, v) for k, v in purposes.versions(session, key)]
    return PurposeDetail(**dict(found), versions=versions)


@router.post(
    "/purposes",
    response_model=PurposeDetail,
    status_code=201,
    responses=CONFLICT,
    tags=["purposes"],
)
def add_purpose(
    body: PurposeIn, session: DbSession, _: Annotated[TokenInfo, Depends(ADMIN)]
) -> PurposeDetail:
    """Register a purpose with its first notice version."""
    purposes.add(
        session,
        body.key,
        title=body.title,
        validity_days=body.validity_days,
        description=body.description,
        lawful_basis=body.lawful_basis.value,
        data_categories=list(body.data_categories),
        texts=texts_arg(body.texts),
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
    caller: Annotated[TokenInfo, Depends(COMPLIANCE)],
) -> PurposeDetail:
    """Publish a new notice version; ``material`` means consents must be re-confirmed.

    ``texts`` add or change the notice in other languages (an editorial version, unless
    ``material``); a change of the default title or description drops the translations not
    given again, so nobody reads a translation of an older notice."""
    purposes.revise(
        session,
        key,
        material=body.material,
        title=body.title,
        description=body.description,
        lawful_basis=body.lawful_basis.value if body.lawful_basis else None,
        data_categories=list(body.data_categories) if body.data_categories is not None else None,
        validity_days=body.validity_days,
        texts=texts_arg(body.texts),
        actor=Actor(ActorType.AGENT, Channel.API, name=api_actor(caller)),
    )
    return get_purpose(key, session, caller)


@router.get("/systems", response_model=list[SystemOut], tags=["systems"])
def list_systems(
    session: ReadSession, _: Annotated[TokenInfo, Depends(COMPLIANCE.reading)]
) -> list[SystemOut]:
    """Downstream systems and the purposes each may process."""
    return [SystemOut.model_validate(s) for s in systems.list_all(session)]

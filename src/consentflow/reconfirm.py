"""Who must re-confirm after a material notice revision: the one rule, as SQL conditions.

A consent is **stale** when it is given on a notice version older than its purpose's latest
material one; it has been **asked** when a re-consent request is open for it, or one was opened
for that material version already (answered, lapsed or cancelled: it is not asked twice). The
re-consent sweep opens a request for each stale consent not asked (``unasked_stale``); the
dashboard counts and the workspace lists them (``reports``: "not yet re-confirmed", "never
asked"); a revision's preview counts whom it would ask. All of them use these conditions.

``materials`` maps a purpose id to its latest material version, for the purposes revised
materially (version > 1; others need no entry). ``c`` is the consent columns (the ORM class
``Consent`` or a Core table's or alias's ``c``). Failure modes: none; pure expressions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sqlalchemy import and_, case, false, literal, or_, select
from sqlmodel import col

from consentflow.models import ConsentRequest, RequestKind, RequestStatus, State


class Revisable(Protocol):
    """A purpose's notice versions, as ``purposes.PurposeInfo`` gives them."""

    @property
    def id(self) -> int: ...

    @property
    def material_version(self) -> int: ...


def materials(infos: Iterable[Revisable]) -> dict[int, int]:
    """``materials`` for these purposes: the id and latest material version of each one revised
    materially (version > 1)."""
    return {i.id: i.material_version for i in infos if i.material_version > 1}


def material_version(c: Any, materials: Mapping[int, int]) -> Any:
    """The latest material version of the consent's purpose (0 for a purpose not listed)."""
    if not materials:
        return literal(0)
    return case(*((c.purpose_id == pid, mv) for pid, mv in materials.items()), else_=0)


def stale(c: Any, materials: Mapping[int, int]) -> Any:
    """Given on a version older than the latest material one; ``materials``: purpose id ->
    material version, for the purposes revised materially (version > 1)."""
    if not materials:
        return false()
    return and_(
        c.state == State.GIVEN.value,
        c.purpose_id.in_(list(materials)),
        c.purpose_version < material_version(c, materials),
    )


def asked(c: Any, materials: Mapping[int, int]) -> Any:
    """A re-consent request is open for this consent, or one asked for the material version."""
    r = ConsentRequest
    return (
        select(col(r.id))
        .where(
            col(r.subject_id) == c.subject_id,
            col(r.purpose_id) == c.purpose_id,
            col(r.kind) == RequestKind.RECONSENT.value,
            or_(
                col(r.status) == RequestStatus.OPEN.value,
                col(r.purpose_version) >= material_version(c, materials),
            ),
        )
        .exists()
    )


def unasked_stale(c: Any, materials: Mapping[int, int]) -> Any:
    """Stale and never asked: whom the re-consent sweep asks."""
    return and_(stale(c, materials), ~asked(c, materials))

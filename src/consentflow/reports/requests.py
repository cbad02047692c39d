"""Consent requests: the API's paged list, the pending requests by age, and the re-consent cohort
after each purpose's latest material revision with the deadlines of its open requests.

Aggregate SQL for the tables (a row per purpose, kind or day); the list is keyset-paged by id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, type_coerce
from sqlmodel import Session, col

from consentflow import purposes
from consentflow.models import (
    Consent,
    ConsentRequest,
    Purpose,
    PurposeVersion,
    RequestKind,
    RequestStatus,
    State,
    Subject,
    UTCDateTime,
)
from consentflow.purposes import PurposeInfo
from consentflow.reports import _where
from consentflow.reports._links import days as link_days
from consentflow.reports._links import lists
from consentflow.reports._sql import ALL, count_if, purpose_keys, utc_day
from consentflow.reports._table import Table


def requests_page(
    session: Session,
    *,
    status: RequestStatus | None = None,
    kind: RequestKind | None = None,
    purpose: str | None = None,
    subject: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> tuple[list[tuple[ConsentRequest, str, str]], bool]:
    """Consent requests after id ``after``, oldest first, with the subject's external id and the
    purpose key; and whether there are more."""
    stmt = (
        select(ConsentRequest, col(Subject.external_id), col(Purpose.key))
        .join(Subject, col(Subject.id) == ConsentRequest.subject_id)
        .join(Purpose, col(Purpose.id) == ConsentRequest.purpose_id)
        .where(col(ConsentRequest.id) > after)
    )
    if status is not None:
        stmt = stmt.where(col(ConsentRequest.status) == status.value)
    if kind is not None:
        stmt = stmt.where(col(ConsentRequest.kind) == kind.value)
    if purpose is not None:
        stmt = stmt.where(col(Purpose.key) == purpose)
    if subject is not None:
        stmt = stmt.where(col(Subject.external_id) == subject)
    rows = session.execute(stmt.order_by(col(ConsentRequest.id)).limit(limit + 1)).all()
    return [(r, ext, key) for r, ext, key in rows[:limit]], len(rows) > limit


def pending_requests(session: Session, now: datetime) -> Table:
    """Open consent requests per purpose and kind, by age."""
    t7, t30, t90 = (now - timedelta(days=d) for d in (7, 30, 90))
    at = col(ConsentRequest.requested_at)
    stmt = (
        select(
            col(ConsentRequest.purpose_id),
            col(ConsentRequest.kind),
            count_if(at >= t7).label("a"),
            count_if((at < t7) & (at >= t30)).label("b"),
            count_if((at < t30) & (at >= t90)).label("c"),
            count_if(at < t90).label("d"),
            func.count().label("n"),
        )
        .where(_where.pending(ConsentRequest))
        .group_by(col(ConsentRequest.purpose_id), col(ConsentRequest.kind))
    )
    keys = purpose_keys(session)
    table = Table(
        "pending",
        "Pending requests by age",
        ["purpose", "kind", "< 7 days", "7-30 days", "30-90 days", "> 90 days", "total"],
    )
    totals = [0, 0, 0, 0, 0]
    for r in session.execute(stmt):
        values = [int(r.a), int(r.b), int(r.c), int(r.d), int(r.n)]
        table.rows.append([keys[r.purpose_id], r.kind, *values])
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    table.rows.sort(key=lambda r: (r[0], r[1]))
    table.rows.append([ALL, "all", *totals])
    # Each number leads to its requests: the same bounds, as instants.
    ages: list[dict[str, datetime]] = [
        {"since": t7},
        {"since": t30, "until": t7},
        {"since": t90, "until": t30},
        {"until": t90},
        {},
    ]
    for i, row in enumerate(table.rows):
        which = {"purpose": row[0], "kind": None if row[1] == "all" else row[1]}
        for j, asked in enumerate(ages, start=2):
            if row[j]:
                table.link(i, table.columns[j], lists("requests", **which, **asked))
    return table


_COHORT_COLUMNS = [
    "purpose",
    "material version",
    "published",
    "not yet re-confirmed",
    "on the new notice",
    "invalidated",
    "open requests",
    "overdue",
    "first deadline",
    "last deadline",
]


def _published(session: Session, infos: dict[int, PurposeInfo]) -> dict[int, datetime]:
    """When each purpose's latest material version was published."""
    return {
        pid: created
        for pid, version, created in session.execute(
            select(
                col(PurposeVersion.purpose_id),
                col(PurposeVersion.version),
                col(PurposeVersion.created_at),
            ).where(col(PurposeVersion.purpose_id).in_(list(infos)))
        ).all()
        if version == infos[pid].material_version
    }


def _cohort_counts(session: Session, infos: dict[int, PurposeInfo]) -> dict[int, Any]:
    """Per purpose: given on an older notice, given on the material one or later, invalidated."""
    materials = {pid: info.material_version for pid, info in infos.items()}
    mv = _where.material_version(Consent, materials)
    return {
        r.purpose_id: r
        for r in session.execute(
            select(
                col(Consent.purpose_id),
                count_if(_where.stale(Consent, materials)).label("old"),
                count_if(
                    (col(Consent.state) == State.GIVEN.value) & (col(Consent.purpose_version) >= mv)
                ).label("new"),
                count_if(col(Consent.state) == State.INVALIDATED.value).label("invalidated"),
            )
            .where(col(Consent.purpose_id).in_(list(infos)))
            .group_by(col(Consent.purpose_id))
        )
    }


def _open_reconsent(infos: dict[int, PurposeInfo]) -> Any:
    return (
        (col(ConsentRequest.status) == RequestStatus.OPEN.value)
        & (col(ConsentRequest.kind) == RequestKind.RECONSENT.value)
        & col(ConsentRequest.purpose_id).in_(list(infos))
    )


def _open_requests(
    session: Session, infos: dict[int, PurposeInfo], now: datetime
) -> dict[int, Any]:
    """Per purpose: open re-consent requests, how many are overdue, first and last deadline."""
    return {
        r.purpose_id: r
        for r in session.execute(
            select(
                col(ConsentRequest.purpose_id),
                func.count().label("n"),
                count_if(col(ConsentRequest.deadline) < now).label("overdue"),
                type_coerce(func.min(ConsentRequest.deadline), UTCDateTime).label("first"),
                type_coerce(func.max(ConsentRequest.deadline), UTCDateTime).label("last"),
            )
            .where(_open_reconsent(infos))
            .group_by(col(ConsentRequest.purpose_id))
        )
    }


def reconsent(session: Session, now: datetime) -> tuple[Table, Table]:
    """The cohort to re-confirm after each purpose's latest material revision, and when the open
    re-consent requests lapse."""
    infos = {i.id: i for i in purposes.info(session).values() if i.material_version > 1}
    cohort = Table(
        "reconsent",
        "Re-consent after the latest material revision",
        list(_COHORT_COLUMNS),
        note="'Not yet re-confirmed': given on an older notice version; they lapse (are "
        "invalidated) when their re-consent request's deadline passes.",
    )
    deadlines = Table(
        "reconsent_deadlines",
        "Re-consent deadlines: how many lapse when",
        ["purpose", "deadline (day)", "open requests"],
    )
    if not infos:
        return cohort, deadlines
    published = _published(session, infos)
    counts = _cohort_counts(session, infos)
    requests = _open_requests(session, infos, now)
    for pid, info in sorted(infos.items(), key=lambda kv: kv[1].key):
        c, r = counts.get(pid), requests.get(pid)
        cohort.rows.append(
            [
                info.key,
                info.material_version,
                published.get(pid),
                int(c.old) if c else 0,
                int(c.new) if c else 0,
                int(c.invalidated) if c else 0,
                int(r.n) if r else 0,
                int(r.overdue) if r else 0,
                r.first if r else None,
                r.last if r else None,
            ]
        )
    day = utc_day(session, ConsentRequest.deadline).label("day")
    for r in session.execute(
        select(col(ConsentRequest.purpose_id), day, func.count().label("n"))
        .where(_open_reconsent(infos))
        .group_by(col(ConsentRequest.purpose_id), day)
        .order_by(day)
        .limit(200)
    ):
        deadlines.rows.append([infos[r.purpose_id].key, r.day or "none", int(r.n)])
    _link_reconsent(cohort, deadlines, now)
    return cohort, deadlines


def _link_reconsent(cohort: Table, deadlines: Table, now: datetime) -> None:
    """Each number leads to its people: open re-consent requests of the purpose, overdue ones
    (deadline before ``now``), those due on a day; the not re-confirmed consents."""
    col_of = {c: i for i, c in enumerate(cohort.columns)}
    for i, row in enumerate(cohort.rows):
        reconsent = {"purpose": row[0], "kind": RequestKind.RECONSENT.value}
        if row[col_of["not yet re-confirmed"]]:
            cohort.link(i, "not yet re-confirmed", lists("not-reconfirmed", purpose=row[0]))
        if row[col_of["open requests"]]:
            cohort.link(i, "open requests", lists("requests", **reconsent))
        if row[col_of["overdue"]]:
            cohort.link(i, "overdue", lists("requests", **reconsent, due_until=now))
    for i, row in enumerate(deadlines.rows):
        if row[1] != "none":
            day = link_days(str(row[1]))
            due = {"due_since": day["since"], "due_until": day["until"]}
            reconsent = {"purpose": row[0], "kind": RequestKind.RECONSENT.value}
            deadlines.link(i, "open requests", lists("requests", **reconsent, **due))

"""Re-consent after a material revision of a purpose: ask everyone whose consent rests on an older
version to confirm, with a deadline; at the deadline, invalidate what was not confirmed.

Three sweeps, run in this order by the ``reconsent`` flow:

- ``reconsent_email_batch`` retries the request emails an earlier run could not send;
- ``reconsent_open_batch`` opens one request per stale consent (never a second while one is open,
  never twice for the same material version; editorial revisions ask nobody) and emails it;
- ``reconsent_deadline_batch`` lapses the requests whose deadline passed and invalidates the
  consents still on the superseded version, through ``lifecycle.invalidate_stale`` (which
  propagates them like a withdrawal).

Renewing or granting on the new version, refusing or revoking answers a request, which is then
no longer open. Emails go through the claim protocol (``claims``).

``would_ask`` counts, by the same rule, whom a material revision published now would ask (the
workspace's preview before publishing one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from consentflow import lifecycle, purposes, reconfirm
from consentflow.links import LinkAction
from consentflow.mail import Kind
from consentflow.models import (
    Consent,
    ConsentRequest,
    Purpose,
    RequestKind,
    RequestStatus,
    utcnow,
)
from consentflow.purposes import PurposeInfo
from consentflow.sweeps._batching import (
    Batch,
    audit_items,
    close_lapsed,
    due_rows,
    email_title,
    purpose_ids,
    subscribers,
    table,
    transaction,
)
from consentflow.sweeps._context import SweepContext
from consentflow.sweeps.claims import (
    Claim,
    deliver,
    link,
    mailable,
    new_claim,
    write_claims,
)

cr = ConsentRequest


def _claim(session: Session, r: Any, request_id: int, deadline: datetime) -> Claim:
    revoke_url = link(session, LinkAction.REVOKE, r.subject_id, r.purpose_id)
    return new_claim(
        Kind.RECONSENT_REQUEST,
        r,
        request_id=request_id,
        unsubscribe_url=revoke_url,
        context={
            "purpose_title": email_title(r),
            "deadline": deadline,
            "grant_url": link(session, LinkAction.GRANT, r.subject_id, r.purpose_id),
            "revoke_url": revoke_url,
            "preferences_url": link(session, LinkAction.PREFERENCES, r.subject_id, None),
            "withdraw_all_url": link(session, LinkAction.REVOKE, r.subject_id, None),
        },
    )


# --------------------------------------------------------------------------------------------
# Open requests
# --------------------------------------------------------------------------------------------


def reconsent_open_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Open a re-consent request (with a deadline) for each consent among the next ``size`` after
    ``cursor`` that rests on a version a material revision superseded and has not been asked
    about that revision, and email it.

    Once per consent and revision: no second request while one is open, and none if a request
    already asked for the current material version. Editorial revisions change nothing here,
    because only material versions count. The deadline runs ``ctx.reconsent_deadline_days``
    from the later of now and ``ctx.as_of``.
    """
    now = utcnow()
    deadline = max(now, ctx.as_of) + timedelta(days=ctx.reconsent_deadline_days)
    batch = Batch()
    with transaction(ctx.engine, ctx.dry_run) as s:
        materials = reconfirm.materials(purpose_ids(s, ctx.purpose_keys).values())
        if not materials:
            return batch
        due = reconfirm.unasked_stale(Consent, materials)
        rows = due_rows(
            s,
            batch,
            Consent,
            due,
            [
                Consent.subject_id,
                Consent.purpose_id,
                Consent.purpose_version,
                Purpose.current_version,
            ],
            cursor=cursor,
            size=size,
            dry_run=ctx.dry_run,
            title_version=Purpose.current_version,
        )
        for r in rows:
            batch.add(r.key, "requested")
        if not rows:
            return batch
        to_email = mailable(s, batch, rows, ctx.dry_run)
        if ctx.dry_run:
            return batch
        request_ids = _open_requests(s, rows, now, deadline)
        claims = [
            _claim(s, r, request_ids[(r.subject_id, r.purpose_id)], deadline) for r in to_email
        ]
        write_claims(s, claims, run_id=ctx.run_id, now=now)
        _audit_opened(s, rows, request_ids, deadline, ctx.run_id)
    return deliver(ctx, claims, batch)


def would_ask(session: Session, key: str) -> int:
    """How many people a material revision of purpose ``key``, published now, would ask to
    re-consent: the consents ``reconsent_open_batch`` would then open a request for, by its own
    rule (``reconfirm.unasked_stale``, with the purpose's material version at the next
    version). An editorial revision asks nobody. ``NotFound`` for an unknown purpose."""
    found = purposes.get(session, key)
    due = reconfirm.unasked_stale(Consent, {found.id: found.current_version + 1})
    return int(session.exec(select(func.count()).select_from(Consent).where(due)).one())


def _open_requests(
    session: Session, rows: Sequence[Any], now: datetime, deadline: datetime
) -> dict[tuple[int, int], int]:
    """Insert one open request per row; their ids by (subject id, purpose id)."""
    requests = table(ConsentRequest)
    opened = session.execute(
        requests.insert().returning(requests.c.id, sort_by_parameter_order=True),
        [
            {
                "subject_id": r.subject_id,
                "purpose_id": r.purpose_id,
                "purpose_version": r.current_version,
                "kind": RequestKind.RECONSENT.value,
                "status": RequestStatus.OPEN.value,
                "requested_at": now,
                "deadline": deadline,
                "followups_sent": 0,
            }
            for r in rows
        ],
    ).all()
    return {(r.subject_id, r.purpose_id): o.id for r, o in zip(rows, opened, strict=True)}


def _audit_opened(
    session: Session,
    rows: Sequence[Any],
    request_ids: dict[tuple[int, int], int],
    deadline: datetime,
    run_id: str | None,
) -> None:
    audit_items(
        session,
        [
            (
                "request.opened",
                r.subject_ref,
                r.key,
                {
                    "request_id": request_ids[(r.subject_id, r.purpose_id)],
                    "kind": RequestKind.RECONSENT.value,
                    "consent_version": r.purpose_version,
                    "purpose_version": r.current_version,
                    "deadline": deadline.isoformat(),
                },
            )
            for r in rows
        ],
        run_id,
    )


# --------------------------------------------------------------------------------------------
# Resend
# --------------------------------------------------------------------------------------------


def reconsent_email_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Send re-consent emails that an earlier attempt could not (4xx, timeout, server down),
    for open requests whose deadline has not passed."""
    batch = Batch()
    due = and_(
        col(cr.kind) == RequestKind.RECONSENT.value,
        col(cr.status) == RequestStatus.OPEN.value,
        col(cr.last_sent_at).is_(None),
        col(cr.deadline) > ctx.as_of,
    )
    now = utcnow()
    with transaction(ctx.engine, ctx.dry_run) as s:
        infos = purpose_ids(s, ctx.purpose_keys)
        rows = due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.subject_id, cr.purpose_id, cr.deadline],
            cursor=cursor,
            size=size,
            dry_run=ctx.dry_run,
            purpose_ids=None if ctx.purposes is None else list(infos),
            title_version=cr.purpose_version,
        )
        claims = [_claim(s, r, r.id, r.deadline) for r in mailable(s, batch, rows, ctx.dry_run)]
        write_claims(s, claims, run_id=ctx.run_id, now=now)
    return deliver(ctx, claims, batch)


# --------------------------------------------------------------------------------------------
# Deadlines
# --------------------------------------------------------------------------------------------


def reconsent_deadline_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """At the deadline: consents still on the superseded version become invalidated (through
    ``lifecycle.invalidate_stale``, which propagates them like a withdrawal) and the request
    lapses. A subject who renewed or granted on the new version, refused or revoked, has
    already answered the request, which is then no longer open."""
    now = utcnow()
    batch = Batch()
    due = and_(
        col(cr.kind) == RequestKind.RECONSENT.value,
        col(cr.status) == RequestStatus.OPEN.value,
        col(cr.deadline) <= ctx.as_of,
    )
    with transaction(ctx.engine, ctx.dry_run) as s:
        infos = purpose_ids(s, ctx.purpose_keys)
        rows = due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.kind, cr.subject_id, cr.purpose_id, cr.requested_at, cr.followups_sent],
            cursor=cursor,
            size=size,
            dry_run=ctx.dry_run,
            purpose_ids=None if ctx.purposes is None else list(infos),
        )
        if not rows:
            return batch
        by_purpose: dict[int, list[int]] = {}
        for r in rows:
            by_purpose.setdefault(r.purpose_id, []).append(r.subject_id)
            batch.add(r.key, "lapsed")
        all_infos = infos if ctx.purposes is None else purpose_ids(s, None)
        if ctx.dry_run:
            _count_invalidations(s, batch, by_purpose, all_infos)
            return batch
        close_lapsed(s, [r.id for r in rows], now)
        invalidated = _invalidate(s, batch, by_purpose, all_infos, ctx.run_id)
        _audit_lapsed(s, rows, invalidated, ctx.run_id)
    return batch


def _count_invalidations(
    session: Session,
    batch: Batch,
    by_purpose: dict[int, list[int]],
    infos: dict[int, PurposeInfo],
) -> None:
    """A dry run's count of what ``_invalidate`` would do (and the webhooks it would enqueue)."""
    materials = reconfirm.materials(infos.values())
    if not materials:
        return
    stale = reconfirm.stale(Consent, materials)
    hooks = subscribers(session)
    for purpose_id, sids in by_purpose.items():
        n = session.exec(
            select(func.count())
            .select_from(Consent)
            .where(stale, col(Consent.purpose_id) == purpose_id, col(Consent.subject_id).in_(sids))
        ).one()
        key = infos[purpose_id].key
        batch.add(key, "invalidated", n)
        batch.add(key, "webhooks_enqueued", n * hooks.get(purpose_id, 0))


def _invalidate(
    session: Session,
    batch: Batch,
    by_purpose: dict[int, list[int]],
    infos: dict[int, PurposeInfo],
    run_id: str | None,
) -> dict[tuple[int, str], str]:
    """Invalidate the stale consents of these subjects through the ledger; the event id of each
    invalidation by (purpose id, subject ref)."""
    invalidated: dict[tuple[int, str], str] = {}
    for purpose_id, sids in by_purpose.items():
        changes = lifecycle.invalidate_stale(
            session,
            infos[purpose_id].key,
            subject_ids=sids,
            limit=len(sids),
            actor=lifecycle.system_actor(run_id),
        )
        for change in changes:
            batch.add(change.purpose, "invalidated")
            batch.add(change.purpose, "webhooks_enqueued", change.deliveries)
            invalidated[(purpose_id, change.subject_ref)] = str(change.event_id)
    return invalidated


def _audit_lapsed(
    session: Session,
    rows: Sequence[Any],
    invalidated: dict[tuple[int, str], str],
    run_id: str | None,
) -> None:
    audit_items(
        session,
        [
            (
                "request.lapsed",
                r.subject_ref,
                r.key,
                {
                    "request_id": r.id,
                    "kind": r.kind,
                    "requested_at": r.requested_at.isoformat(),
                    "reason": "re-consent deadline passed",
                    "invalidated_event_id": invalidated.get((r.purpose_id, r.subject_ref)),
                },
            )
            for r in rows
        ],
        run_id,
    )

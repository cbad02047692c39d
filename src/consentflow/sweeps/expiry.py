"""Expiry: given consents whose validity ended by ``ctx.as_of`` expire.

The lifecycle rules stay in ``lifecycle.py``: expiry goes through its batch function
``expire_due``, which locks subjects with ``SKIP LOCKED`` on PostgreSQL, re-checks each item and
writes state, history, outbox and audit in one transaction. The ledger records each expiry as
effective at the validity end (``occurred_at``) and recorded now (``recorded_at``), and enqueues
its webhook deliveries.

A dry run cannot page through ``expire_batch`` (nothing changes, so every batch would see the same
items): ``preview_expiry`` counts what the batches would do in one query instead, and keeps a
shape of its own (``ctx`` and the run's ``limit``, no size or cursor).
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func
from sqlmodel import col, select

from consentflow import db, lifecycle
from consentflow.models import Consent, State
from consentflow.sweeps._batching import Batch, purpose_ids, subscribers, transaction
from consentflow.sweeps._context import SweepContext


def expire_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Expire up to ``size`` consents whose validity ended by ``ctx.as_of``, in one transaction.

    ``cursor`` is not needed (an expired consent is no longer due, so each batch takes the next
    ones, oldest validity end first) and is ignored. A dry run raises ``ValueError``: use
    ``preview_expiry``.
    """
    if ctx.dry_run:
        raise ValueError("expire_batch changes what it selects: preview a dry run (preview_expiry)")
    with db.session_scope(ctx.engine) as s:
        changes = lifecycle.expire_due(
            s,
            as_of=ctx.as_of,
            limit=size,
            purposes_=ctx.purpose_keys,
            actor=lifecycle.system_actor(ctx.run_id),
        )
    batch = Batch(seen=len(changes), more=bool(changes))
    expired: Counter[str] = Counter()
    enqueued: Counter[str] = Counter()
    for change in changes:
        expired[change.purpose] += 1
        enqueued[change.purpose] += change.deliveries
    for purpose, n in expired.items():
        batch.add(purpose, "expired", n)
        batch.add(purpose, "webhooks_enqueued", enqueued[purpose])
    return batch


def preview_expiry(ctx: SweepContext, limit: int | None = None) -> Batch:
    """What ``expire_batch`` calls would do (same order, same limit), computed in the database
    in a transaction that is rolled back."""
    with transaction(ctx.engine, dry_run=True) as s:
        infos = purpose_ids(s, ctx.purpose_keys)
        due = (
            select(Consent.purpose_id)
            # lapsed = ledger.has_lapsed / effective_state (ledger/_rules.py), in SQL
            .where(col(Consent.state) == State.GIVEN.value, col(Consent.valid_until) <= ctx.as_of)
            .order_by(col(Consent.valid_until), col(Consent.id))
        )
        if ctx.purposes is not None:
            due = due.where(col(Consent.purpose_id).in_(list(infos)))
        if limit is not None:
            due = due.limit(limit)
        sub = due.subquery()
        rows = s.exec(select(sub.c.purpose_id, func.count()).group_by(sub.c.purpose_id)).all()
        hooks = subscribers(s)
    batch = Batch()
    for purpose_id, n in rows:
        key = infos[purpose_id].key
        batch.add(key, "expired", n)
        batch.add(key, "webhooks_enqueued", n * hooks.get(purpose_id, 0))
        batch.seen += n
    return batch

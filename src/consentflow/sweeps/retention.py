"""Retention: what the law no longer requires leaves, by age, as of ``ctx.as_of``.

Five kinds, each with its own number of days in the settings (``CONSENTFLOW_RETENTION_*_DAYS``;
0 keeps that kind forever) and its cut-off ``as_of - days``; a row goes only when it is strictly
older than its cut-off, so nothing younger is ever touched:

- ``evidence``: a consent event's ``evidence`` (IP address, user agent, form id) becomes NULL
  once the event was recorded before the cut-off, unless the event is still the current event
  of a given consent (the proof of a consent in force stays while it is relied on);
- ``attempts``: ``delivery_attempt`` rows started before the cut-off whose delivery is settled
  (delivered or dead); a pending delivery keeps its whole log;
- ``emails``: ``email_message`` rows claimed before the cut-off whose outcome is final (sent,
  deferred, bounced, failed; never ``claimed``), except those the claim protocol still reads to
  undo a claim (``_undo``): the messages of an open request, and renewal reminders sent in
  their consent's current validity period;
- ``requests``: ``consent_request`` rows closed (answered or lapsed) before the cut-off that no
  kept send record refers to (an email record outliving its request is never orphaned, and no
  record goes earlier than its own setting says); open requests never go;
- ``sessions``: ``web_session`` rows that expired or were signed out before the cut-off.

Invariant: pruned data is outside the audit chain. The chain, the consent history rows, the
current state and the pseudonymous references stay forever; an event's evidence is chained only
as a keyed hash (``audit.evidence_digest``), which stays. Each real run ends with exactly one
audit entry, ``retention.swept`` (``record_sweep``), whose detail holds the run's counts per
kind, ``as_of``, the cut-offs (ISO UTC, None: kept forever) and, once evidence has ever been
pruned, ``evidence_before``: every event recorded before it may have lost its evidence.
``integrity`` accepts a NULL evidence under a non-NULL chained hash for exactly those events.
``evidence_before`` never moves back (the largest cut-off any run pruned evidence at), so a run
with a longer setting or an earlier ``as_of`` cannot make an earlier run's pruning a finding.

Shape: the four row kinds are plain batch functions ``fn(ctx, size, cursor) -> Batch`` (the
sweeps' shape; ``BATCHES``, in the order a run drains them: emails before requests), one
transaction per batch, set-based (one select of the next ``size`` ids after ``cursor``, one
DELETE re-checking the same condition). Evidence is not batched: ``record_sweep`` clears it with
one UPDATE in the transaction that appends the ``retention.swept`` entry, so evidence is never
gone without the entry that excuses it (a run killed between a committed evidence batch and its
entry would leave ``audit verify`` failing, and every later run refused). A daily run clears a
day's worth; a first run on a long history clears years at once in that one transaction (run it
with an earlier ``as_of`` first to take it in steps). A dry run does not page:
``preview_retention`` counts every kind in one read-only transaction, with the same conditions.

Failure modes: ``require_intact`` raises ``Conflict`` (one line, naming the first ``audit
verify`` finding) before anything changes when the record is broken; a batch that fails rolls
back alone (a re-run finishes the rest; none of it is chained); a failure in ``record_sweep``
rolls back the evidence, the key shredding and the entry together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, exists, func, null, or_, select
from sqlmodel import Session, col

from consentflow import audit, db, erasure, integrity
from consentflow.mail import Kind, SendStatus
from consentflow.models import (
    ActorType,
    AuditEntry,
    AuditHead,
    Channel,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    EmailMessage,
    RequestStatus,
    State,
    WebSession,
)
from consentflow.settings import get_settings
from consentflow.sweeps._batching import Batch, table
from consentflow.sweeps._context import SweepContext
from consentflow.timeutil import as_utc, iso_z

#: The audit entry each real run ends with.
ACTION = "retention.swept"
#: What a run refuses to do on a broken record (``integrity.require_intact``).
WHAT = "apply retention"
#: The kinds, in the order a run prunes them (emails before the requests they name; evidence
#: last, with the run's entry).
KINDS = ("sessions", "attempts", "emails", "requests", "evidence")
#: Counts carry no purpose: every row is counted under this one.
ALL = "-"
#: The count of per-subject data keys destroyed (``erasure.shred_settled``) by a run.
SHREDDED = "keys_shredded"
#: Email outcomes that never change again (``claimed`` is not one).
FINAL = (SendStatus.SENT, SendStatus.DEFERRED, SendStatus.BOUNCED, SendStatus.FAILED)


def outcome(kind: str) -> str:
    """A kind's count in a batch and in the run summary: ``emails`` -> ``emails_pruned``."""
    return f"{kind}_pruned"


def days(kind: str) -> int:
    """The kind's retention in days (``CONSENTFLOW_RETENTION_<KIND>_DAYS``); 0: forever."""
    value: int = getattr(get_settings(), f"retention_{kind}_days")
    return value


def cutoff(kind: str, as_of: datetime) -> datetime | None:
    """Rows of ``kind`` strictly older than this go; None: the kind is kept forever."""
    n = days(kind)
    return None if n == 0 else as_utc(as_of) - timedelta(days=n)


def cutoffs(as_of: datetime) -> dict[str, datetime | None]:
    """Every kind's cut-off as of ``as_of``."""
    return {kind: cutoff(kind, as_of) for kind in KINDS}


# --------------------------------------------------------------------------------------------
# What is due, per kind (the one condition a preview counts and a batch re-checks)
# --------------------------------------------------------------------------------------------


def _email_prunable(m: Any, before: datetime) -> ColumnElement[bool]:
    """An email record of ``m`` (the table or an alias) that may go (see the module docstring)."""
    r = table(ConsentRequest).alias("open_request")
    c, e = table(Consent).alias("current"), table(ConsentEvent).alias("period")
    in_current_period = (
        select(c.c.id)
        .join(e, e.c.id == c.c.last_event_id)
        .where(
            c.c.subject_id == m.c.subject_id,
            c.c.purpose_id == m.c.purpose_id,
            e.c.recorded_at <= m.c.created_at,
        )
    )
    return and_(
        m.c.created_at < before,
        m.c.status.in_([s.value for s in FINAL]),
        ~exists(
            select(r.c.id).where(r.c.id == m.c.request_id, r.c.status == RequestStatus.OPEN.value)
        ),
        or_(m.c.kind != Kind.RENEWAL_REMINDER.value, ~exists(in_current_period)),
    )


def _due(kind: str, before: datetime, as_of: datetime) -> tuple[Table, ColumnElement[bool]]:
    """The table of ``kind`` and the condition its rows due for pruning meet."""
    if kind == "evidence":
        e, c = table(ConsentEvent), table(Consent)
        in_force = select(c.c.id).where(c.c.last_event_id == e.c.id, c.c.state == State.GIVEN.value)
        return e, and_(e.c.evidence.is_not(None), e.c.recorded_at < before, ~exists(in_force))
    if kind == "attempts":
        a, d = table(DeliveryAttempt), table(Delivery)
        settled = select(d.c.id).where(
            d.c.id == a.c.delivery_id,
            d.c.state.in_([DeliveryState.DELIVERED.value, DeliveryState.DEAD.value]),
        )
        return a, and_(a.c.started_at < before, exists(settled))
    if kind == "emails":
        m = table(EmailMessage)
        return m, _email_prunable(m, before)
    if kind == "requests":
        r = table(ConsentRequest)
        record = table(EmailMessage).alias("record")
        kept = select(record.c.id).where(record.c.request_id == r.c.id)
        emails_before = cutoff("emails", as_of)
        if emails_before is not None:
            kept = kept.where(~_email_prunable(record, emails_before))
        closed = and_(r.c.status != RequestStatus.OPEN.value, r.c.closed_at < before)
        return r, and_(closed, ~exists(kept))
    if kind == "sessions":
        w = table(WebSession)
        return w, or_(w.c.expires_at < before, w.c.revoked_at < before)
    raise ValueError(f"unknown retention kind {kind!r}")


# --------------------------------------------------------------------------------------------
# The batches
# --------------------------------------------------------------------------------------------


def _prune(ctx: SweepContext, kind: str, size: int, cursor: int) -> Batch:
    """One batch of ``kind``: the next ``size`` due rows, pruned in one transaction."""
    if ctx.dry_run:
        raise ValueError("a retention batch changes what it selects: preview a dry run")
    before = cutoff(kind, ctx.as_of)
    if before is None:
        return Batch()
    t, due = _due(kind, before, ctx.as_of)
    ident = t.c.id
    pick = select(ident).where(due, ident > cursor)
    batch = Batch()
    with db.session_scope(ctx.engine) as s:
        ids = list(s.execute(pick.order_by(ident).limit(size)).scalars())
        if not ids:
            return batch
        if kind == "requests":  # a record that became prunable since the select
            _drop_emails_of(s, ids, ctx.as_of, batch)
        done = s.execute(t.delete().where(ident.in_(ids), due))
    batch.seen, batch.more, batch.cursor = len(ids), len(ids) == size, ids[-1]
    batch.add(ALL, outcome(kind), getattr(done, "rowcount", 0))
    return batch


def _drop_emails_of(
    session: Session, request_ids: list[int], as_of: datetime, batch: Batch
) -> None:
    """The prunable email records of requests about to go (none, unless one just settled)."""
    before = cutoff("emails", as_of)
    if before is None:
        return
    m = table(EmailMessage)
    done = session.execute(
        m.delete().where(m.c.request_id.in_(request_ids), _email_prunable(m, before))
    )
    batch.add(ALL, outcome("emails"), getattr(done, "rowcount", 0))


def prune_sessions_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Remove up to ``size`` web sessions that ended before their cut-off, after ``cursor``."""
    return _prune(ctx, "sessions", size, cursor)


def prune_attempts_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Remove up to ``size`` attempt-log rows of settled deliveries, after ``cursor``."""
    return _prune(ctx, "attempts", size, cursor)


def prune_emails_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Remove up to ``size`` final email send records, after ``cursor``."""
    return _prune(ctx, "emails", size, cursor)


def prune_requests_batch(ctx: SweepContext, size: int, cursor: int = 0) -> Batch:
    """Remove up to ``size`` closed consent requests, after ``cursor``."""
    return _prune(ctx, "requests", size, cursor)


#: The batch functions of the row kinds, in the order a run drains them (evidence goes last,
#: in ``record_sweep``).
BATCHES: tuple[Callable[[SweepContext, int, int], Batch], ...] = (
    prune_sessions_batch,
    prune_attempts_batch,
    prune_emails_batch,
    prune_requests_batch,
)


def preview_retention(ctx: SweepContext) -> Batch:
    """What a run as of ``ctx.as_of`` would prune, per kind, counted in one read-only
    transaction (the same conditions as the batches; requests are counted as if the emails
    before them were already pruned, as a run does)."""
    batch = Batch()
    with db.session_scope(ctx.engine, readonly=True) as s:
        for kind in KINDS:
            before = cutoff(kind, ctx.as_of)
            if before is None:
                continue
            t, due = _due(kind, before, ctx.as_of)
            n = s.execute(select(func.count()).select_from(t).where(due)).scalar_one()
            batch.add(ALL, outcome(kind), n)
            batch.seen += n
    return batch


# --------------------------------------------------------------------------------------------
# Before and after a run
# --------------------------------------------------------------------------------------------


def require_intact(ctx: SweepContext) -> None:
    """Refuse the run (``Conflict``, one line) when ``audit verify`` finds anything."""
    with db.session_scope(ctx.engine, readonly=True) as s:
        integrity.require_intact(s, WHAT)


def record_sweep(ctx: SweepContext, counts: Mapping[tuple[str, str], int]) -> Batch:
    """End a real run in one transaction: clear the evidence past its cut-off, destroy the data
    keys erasure left to settle, and append the run's one ``retention.swept`` entry (the
    ``counts`` of the row kinds and these, as of, cut-offs, ``evidence_before``). Returns the
    evidence and shredding counts."""
    if ctx.dry_run:
        raise ValueError("a dry run records no retention.swept entry")
    batch = Batch()
    with db.session_scope(ctx.engine) as s:
        before = cutoff("evidence", ctx.as_of)
        if before is not None:
            events, due = _due("evidence", before, ctx.as_of)
            done = s.execute(events.update().where(due).values(evidence=null()))
            batch.add(ALL, outcome("evidence"), getattr(done, "rowcount", 0))
        batch.add(ALL, SHREDDED, _shred(s))
        # The head's lock first, so two runs never both carry forward a stale evidence_before.
        s.execute(select(col(AuditHead.seq)).where(col(AuditHead.id) == 1).with_for_update()).one()
        totals = Counter(counts) + batch.counts
        detail = sweep_detail(ctx.as_of, totals, totals[(ALL, SHREDDED)], _marked(s))
        audit.record(
            s,
            ACTION,
            actor_type=ActorType.SYSTEM.value,
            actor="consentflow",
            channel=Channel.SYSTEM.value,
            run_id=ctx.run_id,
            detail=detail,
        )
    return batch


def sweep_detail(
    as_of: datetime,
    counts: Mapping[tuple[str, str], int],
    shredded: int,
    marked: datetime | None,
) -> dict[str, Any]:
    """The ``retention.swept`` detail: never a name, address or token, only counts and instants.
    ``marked`` is the ``evidence_before`` of earlier runs (None: none pruned evidence yet)."""
    limits = cutoffs(as_of)
    detail: dict[str, Any] = {
        "as_of": iso_z(as_utc(as_of)),
        "days": {kind: days(kind) for kind in KINDS},
        "cutoffs": {kind: iso_z(limits[kind]) for kind in KINDS},
        "counts": {kind: counts.get((ALL, outcome(kind)), 0) for kind in KINDS},
        SHREDDED: shredded,
    }
    mark = marked
    pruned_now = limits["evidence"] if detail["counts"]["evidence"] else None
    if pruned_now is not None and (mark is None or pruned_now > mark):
        mark = pruned_now
    if mark is not None:
        detail["evidence_before"] = iso_z(mark)
    return detail


def _marked(session: Session) -> datetime | None:
    """The ``evidence_before`` the latest ``retention.swept`` entry carries (None: none)."""
    latest = session.execute(
        select(col(AuditEntry.detail))
        .where(col(AuditEntry.action) == ACTION)
        .order_by(col(AuditEntry.seq).desc())
        .limit(1)
    ).scalar()
    value = (latest or {}).get("evidence_before")
    return as_utc(value) if isinstance(value, str) else None


def _shred(session: Session) -> int:
    """Per-subject data keys destroyed (``erasure.shred_settled``: erased subjects with no
    delivery left pending, each with its own ``subject.shredded`` entry)."""
    return erasure.shred_settled(session)

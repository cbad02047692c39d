"""What the lifecycle flows do, as plain batch functions (the flows in ``flows/`` only loop them).

Each function handles one batch in transactions of its own and returns a ``Batch``: counts per
(purpose, outcome), how many due items it looked at, and where the next batch starts. The flows
call them until nothing is left, one Prefect task per batch; tests and benchmarks call them
directly. With ``dry_run`` the same selection and classification runs, nothing is written, and
the counts say exactly what a real run would have done (same outcome names).

The lifecycle rules stay in ``lifecycle.py``: expiry and invalidation go through its batch
functions (``expire_due``, ``invalidate_stale``), which lock subjects with ``SKIP LOCKED`` on
PostgreSQL, re-check each item and write state, history, outbox and audit in one transaction.

Emails (renewal reminders, collection follow-ups, re-consent requests) are claimed before they
are sent, so that two concurrent runs never email the same item and a re-run does not resend:

1. *claim* (one transaction): lock the due items' subjects (``FOR UPDATE SKIP LOCKED``; on SQLite
   the whole database is held), re-check that each is still due (``_due_rows``), insert an
   ``email_message`` row with status ``claimed`` and a fresh Message-ID, and advance the item
   (``Consent.reminder_stage`` or ``ConsentRequest.followups_sent``/``last_sent_at``) so it is no
   longer due (``_write_claims``); commit.
2. *send* over the mailer's pooled connections, outside any transaction (``_deliver``).
3. *record* (one transaction, ``record_results``): each message becomes ``sent``, ``bounced``
   (5xx: the address is suppressed, and every later claim skips it) or ``deferred`` (4xx,
   timeout, lost connection, server down: the item's advance is undone from the message log, so
   it is due for the next run); one audit entry per message, carrying the run id.

At-least-once window: if the process dies after the server accepted a message and before step 3
commits, the message stays ``claimed``. After ``CONSENTFLOW_MAIL_CLAIM_LEASE_MINUTES`` a later
run releases such claims as ``deferred`` (outcome unknown) and the item becomes due again, so that
person may get the same email twice. The alternative (never resending) could silently lose a
reminder; for consent emails a rare duplicate is the lesser harm. The lease must exceed the time
a batch takes to send.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from consentflow import audit, db, lifecycle, links, mail, purposes
from consentflow.keys import instance_secret
from consentflow.links import LinkAction
from consentflow.mail import Kind, MailUnavailable, SendResult, SendStatus
from consentflow.models import (
    ActorType,
    Channel,
    Consent,
    ConsentEvent,
    ConsentRequest,
    EmailMessage,
    EmailSuppression,
    Purpose,
    PurposeVersion,
    RequestKind,
    RequestStatus,
    State,
    Subject,
    System,
    SystemPurpose,
    utcnow,
)
from consentflow.purposes import PurposeInfo
from consentflow.settings import get_settings

Counts = Counter[tuple[str, str]]

# --------------------------------------------------------------------------------------------
# Shared
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What one batch did. ``more``: call again (from ``cursor``) for the rest."""

    counts: Counts = field(default_factory=Counter)
    seen: int = 0
    cursor: int = 0
    more: bool = False

    def add(self, purpose: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(purpose, outcome)] += n


def drain(
    step: Callable[[int, int], Batch], *, batch_size: int, limit: int | None = None
) -> Iterator[Batch]:
    """Call ``step(size, cursor)`` until nothing is left or ``limit`` items have been seen."""
    cursor, remaining = 0, limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        batch = step(size, cursor)
        yield batch
        if remaining is not None:
            remaining -= batch.seen
        if not batch.more:
            return
        cursor = batch.cursor


def transient(exc: BaseException) -> bool:
    """Worth retrying the batch: the database or the mail server hiccupped, not our code."""
    return isinstance(exc, OperationalError | MailUnavailable | TimeoutError | ConnectionError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry a batch only after a transient failure."""
    try:
        state.result()
    except Exception as exc:
        return transient(exc)
    return False


@contextmanager
def _session(engine: Engine | None, dry_run: bool) -> Iterator[Session]:
    """A transaction that commits, or for a dry run one that is always rolled back."""
    if not dry_run:
        with db.session_scope(engine) as s:
            yield s
        return
    with Session(engine or db.get_engine(), expire_on_commit=False) as s:
        try:
            yield s
        finally:
            s.rollback()


def _lock_subjects(session: Session, ids: Sequence[int], *, skip_locked: bool = True) -> set[int]:
    """Lock subject rows in id order (as the ledger does); others' locked rows are skipped."""
    if not ids:
        return set()
    stmt = (
        select(Subject.id)
        .where(col(Subject.id).in_(sorted(set(ids))))
        .order_by(col(Subject.id))
        .with_for_update(skip_locked=skip_locked)
    )
    return set(session.exec(stmt).all())


def _due_rows(
    session: Session,
    batch: Batch,
    model: Any,
    due: Any,
    columns: Sequence[Any],
    *,
    cursor: int,
    size: int,
    dry_run: bool,
    purpose_ids: list[int] | None = None,
    title_version: Any = None,
) -> Sequence[Any]:
    """The next page of due items, re-read under their subjects' locks.

    ``model`` is ``Consent`` or ``ConsentRequest``; its rows matching ``due`` after ``cursor`` (of
    ``purpose_ids`` only, if given) are paged by id and the page is recorded in ``batch``. Their
    subjects are then locked (none are in a dry run) and the page re-read: the items still due
    whose subjects this transaction holds, in id order, as ``columns`` with the subject's
    ``subject_ref`` and the purpose's ``key``. For an email, ``title_version`` is the purpose
    version whose title it shows; the rows then also carry ``email``, ``locale`` and ``title``.

    Pages follow the id, so each run walks the due items once and an item skipped here (locked
    by another run, or not mailable) does not hold up the rest.
    """
    stmt = select(model.id, model.subject_id).where(due, col(model.id) > cursor)
    if purpose_ids is not None:
        stmt = stmt.where(col(model.purpose_id).in_(purpose_ids))
    candidates = session.exec(stmt.order_by(col(model.id)).limit(size)).all()
    if not candidates:
        return []
    batch.seen, batch.cursor = len(candidates), candidates[-1][0]
    batch.more = len(candidates) == size
    subject_ids = [c[1] for c in candidates]
    locked = set(subject_ids) if dry_run else _lock_subjects(session, subject_ids)
    extra = [Subject.subject_ref, Purpose.key]
    if title_version is not None:
        extra += [Subject.email, Subject.locale, PurposeVersion.title]
    rows = (
        select(*columns, *extra)
        .join(Subject, col(Subject.id) == model.subject_id)
        .join(Purpose, col(Purpose.id) == model.purpose_id)
    )
    if title_version is not None:
        rows = rows.join(
            PurposeVersion,
            (col(PurposeVersion.purpose_id) == model.purpose_id)
            & (col(PurposeVersion.version) == title_version),
        )
    return session.exec(
        rows.where(
            col(model.id).in_([c[0] for c in candidates]),
            col(model.subject_id).in_(sorted(locked)),
            due,
        ).order_by(col(model.id))
    ).all()


def _suppression(session: Session, rows: Sequence[Any]) -> Callable[[str], bool]:
    """Whether an address (one of ``rows``' ``email``) is on the suppression list: one query
    for the whole page."""
    addresses = [r.email for r in rows if r.email]
    if not addresses:
        return lambda address: False
    secret = instance_secret(session)
    hashes = _suppressed(session, secret, addresses)
    return lambda address: mail.address_hash(secret, address) in hashes


def _purpose_ids(session: Session, keys: list[str] | None) -> dict[int, PurposeInfo]:
    return {i.id: i for i in purposes.info(session, keys).values()}


def _subscribers(session: Session) -> dict[int, int]:
    """Systems with a webhook per purpose id: how many deliveries a withdrawal enqueues."""
    stmt = (
        select(SystemPurpose.purpose_id, func.count())
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(System.webhook_url).is_not(None))
        .group_by(col(SystemPurpose.purpose_id))
    )
    return {pid: n for pid, n in session.exec(stmt).all()}


def _audit(
    session: Session, rows: list[tuple[str, str, str, dict[str, Any]]], run_id: str | None
) -> None:
    """One audit entry per item: (action, subject_ref, purpose_key, detail). Call it last."""
    audit.append(
        session,
        (
            audit.Entry(
                action=action,
                subject_ref=ref,
                purpose_key=key,
                actor_type=ActorType.SYSTEM.value,
                actor="consentflow",
                channel=Channel.SYSTEM.value,
                run_id=run_id,
                detail=detail,
            )
            for action, ref, key, detail in rows
        ),
    )


# --------------------------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------------------------


def expire_batch(
    *,
    as_of: datetime,
    size: int,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    engine: Engine | None = None,
) -> Batch:
    """Expire up to ``size`` consents whose validity ended by ``as_of``, in one transaction.

    The ledger records each expiry as effective at the validity end (``occurred_at``) and
    recorded now (``recorded_at``), and enqueues its webhook deliveries.
    """
    with db.session_scope(engine) as s:
        changes = lifecycle.expire_due(
            s,
            as_of=as_of,
            limit=size,
            purposes_=purposes_,
            actor=lifecycle.system_actor(run_id),
        )
    batch = Batch(seen=len(changes), more=bool(changes))
    for change in changes:
        batch.add(change.purpose, "expired")
        batch.add(change.purpose, "webhooks_enqueued", change.deliveries)
    return batch


def preview_expiry(
    *,
    as_of: datetime,
    limit: int | None = None,
    purposes_: list[str] | None = None,
    engine: Engine | None = None,
) -> Batch:
    """What ``expire_batch`` calls would do (same order, same limit), computed in the database."""
    with _session(engine, dry_run=True) as s:
        infos = _purpose_ids(s, purposes_)
        due = (
            select(Consent.purpose_id)
            .where(Consent.state == State.GIVEN.value, col(Consent.valid_until) <= as_of)
            .order_by(col(Consent.valid_until), col(Consent.id))
        )
        if purposes_ is not None:
            due = due.where(col(Consent.purpose_id).in_(list(infos)))
        if limit is not None:
            due = due.limit(limit)
        sub = due.subquery()
        rows = s.exec(select(sub.c.purpose_id, func.count()).group_by(sub.c.purpose_id)).all()
        hooks = _subscribers(s)
    batch = Batch()
    for purpose_id, n in rows:
        key = infos[purpose_id].key
        batch.add(key, "expired", n)
        batch.add(key, "webhooks_enqueued", n * hooks.get(purpose_id, 0))
        batch.seen += n
    return batch


# --------------------------------------------------------------------------------------------
# Email claims: claim, send, record (see the module docstring)
# --------------------------------------------------------------------------------------------

_CLAIMED = "claimed"


@dataclass
class Claim:
    """One email about to be sent. ``address`` is never logged or audited."""

    kind: Kind
    subject_id: int
    subject_ref: str
    purpose_id: int
    purpose_key: str
    address: str = field(repr=False)
    locale: str
    context: dict[str, Any] = field(repr=False)
    message_id: str = ""
    stage: int | None = None
    request_id: int | None = None
    unsubscribe_url: str | None = field(default=None, repr=False)
    row_id: int | None = None


def _suppressed(session: Session, secret: bytes, addresses: Sequence[str]) -> set[str]:
    """The hashes among ``addresses`` that are on the suppression list."""
    hashes = {mail.address_hash(secret, a) for a in addresses}
    if not hashes:
        return set()
    stmt = select(EmailSuppression.address_hash).where(
        col(EmailSuppression.address_hash).in_(sorted(hashes))
    )
    return set(session.exec(stmt).all())


def _link(session: Session, action: LinkAction, subject_id: int, purpose_id: int | None) -> str:
    return links.url(links.issue(session, action, subject_id, purpose_id))


def _new_claim(kind: Kind, r: Any, **fields: Any) -> Claim:
    """A claim on the item in ``r`` (a row of ``_due_rows``), under a fresh Message-ID."""
    return Claim(
        kind=kind,
        subject_id=r.subject_id,
        subject_ref=r.subject_ref,
        purpose_id=r.purpose_id,
        purpose_key=r.key,
        address=r.email,
        locale=r.locale,
        message_id=mail.new_message_id(),
        **fields,
    )


def _mailable(session: Session, batch: Batch, rows: Sequence[Any], dry_run: bool) -> list[Any]:
    """The rows (of ``_due_rows``) an email can go to now, in order; the others are counted
    (``no_email``, ``suppressed``). A dry run counts those it would send as sent and returns
    none, since nothing is claimed."""
    suppressed = _suppression(session, rows)
    mailable = []
    for r in rows:
        if not r.email:
            batch.add(r.key, "no_email")
        elif suppressed(r.email):
            batch.add(r.key, "suppressed")
        elif dry_run:
            batch.add(r.key, SendStatus.SENT.value)
        else:
            mailable.append(r)
    return mailable


def _write_claims(
    session: Session, claims: list[Claim], *, run_id: str | None, now: datetime
) -> None:
    """Step 1's writes, in the caller's transaction (which commits before anything is sent): a
    ``claimed`` message per claim, and each item advanced so that it is no longer due."""
    if not claims:
        return
    _insert_claims(session, claims, run_id=run_id, now=now)
    _advance_claims(session, claims, now)


def _insert_claims(
    session: Session, claims: list[Claim], *, run_id: str | None, now: datetime
) -> None:
    table = EmailMessage.__table__
    rows = session.execute(
        insert(table).returning(table.c.id, sort_by_parameter_order=True),  # type: ignore[attr-defined]
        [
            {
                "message_id": c.message_id,
                "subject_id": c.subject_id,
                "purpose_id": c.purpose_id,
                "request_id": c.request_id,
                "kind": c.kind.value,
                "stage": c.stage,
                "status": _CLAIMED,
                "run_id": run_id,
                "created_at": now,
            }
            for c in claims
        ],
    ).all()
    for claim, row in zip(claims, rows, strict=True):
        claim.row_id = row.id


def _deliver(
    mailer: mail.Mailer | None,
    claims: list[Claim],
    batch: Batch,
    *,
    run_id: str | None,
    engine: Engine | None,
) -> Batch:
    """Steps 2 and 3, once the claims are committed: send them, record each outcome and count it
    in ``batch``; raise if the server was unavailable."""
    if not claims:
        return batch
    assert mailer is not None, "a real run needs a mailer"
    report: mail.SendReport | None = None
    failure: BaseException | None = None
    try:
        outgoing = [
            mail.compose(
                mail.render(c.kind, c.locale, c.context),
                to=c.address,
                message_id=c.message_id,
                unsubscribe_url=c.unsubscribe_url,
            )
            for c in claims
        ]
        report = mailer.send(outgoing)
    except BaseException as exc:  # recorded as not sent below, then re-raised
        failure = exc
    if report is None:
        reason = f"not sent: {_exc_text(failure)}"
        results = [SendResult(SendStatus.DEFERRED, None, reason)] * len(claims)
    else:
        results = report.results
    counts = record_results(claims, results, run_id=run_id, engine=engine)
    if failure is not None:
        raise failure
    if report is not None and report.unavailable:
        raise MailUnavailable(report.unavailable)
    batch.counts.update(counts)
    return batch


def _exc_text(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return mail.redact(f"{exc.__class__.__name__}: {exc}")


def record_results(
    claims: list[Claim],
    results: Sequence[SendResult],
    *,
    run_id: str | None,
    engine: Engine | None = None,
) -> Counts:
    """Step 3: mark each claimed message, suppress hard bounces, undo deferred claims, audit."""
    now = utcnow()
    counts: Counts = Counter()
    pairs = list(zip(claims, results, strict=True))
    with db.session_scope(engine) as s:
        _lock_subjects(s, [c.subject_id for c in claims], skip_locked=False)
        table = EmailMessage.__table__
        s.execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("b_id"))  # type: ignore[attr-defined]
            .values(
                status=bindparam("b_status"),
                sent_at=bindparam("b_sent"),
                error=bindparam("b_error"),
            ),
            [
                {
                    "b_id": c.row_id,
                    "b_status": r.status.value,
                    "b_sent": now if r.status is SendStatus.SENT else None,
                    "b_error": r.error,
                }
                for c, r in pairs
            ],
        )
        bounced = [(c, r) for c, r in pairs if r.status is SendStatus.BOUNCED]
        if bounced:
            secret = instance_secret(s)
            _suppress(s, [(mail.address_hash(secret, c.address), r) for c, r in bounced], now)
        _undo_claims(
            s,
            [
                (c.kind, c.subject_id, c.purpose_id, c.request_id, c.stage)
                for c, r in pairs
                if r.status is SendStatus.DEFERRED
            ],
        )
        entries = []
        for c, r in pairs:
            counts[(c.purpose_key, r.status.value)] += 1
            detail: dict[str, Any] = {
                "kind": c.kind.value,
                "message_id": c.message_id,
                "stage": c.stage,
                "request_id": c.request_id,
                "smtp_code": r.code,
            }
            if r.error:
                detail["error"] = r.error
            if r.status is SendStatus.BOUNCED:
                detail["suppressed"] = True
            entries.append((f"email.{r.status.value}", c.subject_ref, c.purpose_key, detail))
        _audit(s, entries, run_id)
    return counts


def _suppress(session: Session, items: list[tuple[str, SendResult]], now: datetime) -> None:
    """Put address hashes on the suppression list (already there: left as it is)."""
    insert_ = postgresql.insert if db.is_postgres(session) else sqlite.insert
    reasons = {h: (r.error or "permanent failure")[:500] for h, r in items}
    session.execute(
        insert_(EmailSuppression)
        .values(
            [{"address_hash": h, "reason": why, "created_at": now} for h, why in reasons.items()]
        )
        .on_conflict_do_nothing(index_elements=["address_hash"])
    )


def _advance_claims(session: Session, claims: list[Claim], now: datetime) -> None:
    """Advance each claimed item so that it is no longer due (``_undo_claims`` reverses it)."""
    reminders = [c for c in claims if c.kind is Kind.RENEWAL_REMINDER]
    if reminders:
        ct: Any = Consent.__table__
        session.execute(
            update(ct)
            .where(ct.c.subject_id == bindparam("b_sid"), ct.c.purpose_id == bindparam("b_pid"))
            .values(reminder_stage=bindparam("b_stage")),
            [{"b_sid": c.subject_id, "b_pid": c.purpose_id, "b_stage": c.stage} for c in reminders],
        )
    rt: Any = ConsentRequest.__table__
    followups = [c for c in claims if c.kind is Kind.COLLECTION_FOLLOWUP]
    if followups:
        session.execute(
            update(rt)
            .where(rt.c.id == bindparam("b_rid"))
            .values(followups_sent=bindparam("b_n"), last_sent_at=now),
            [{"b_rid": c.request_id, "b_n": c.stage} for c in followups],
        )
    reconsents = [c for c in claims if c.kind is Kind.RECONSENT_REQUEST]
    if reconsents:
        session.execute(
            update(rt)
            .where(rt.c.id.in_([c.request_id for c in reconsents]))
            .values(last_sent_at=now)
        )


def _undo_claims(
    session: Session, items: list[tuple[Kind, int, int, int | None, int | None]]
) -> None:
    """Make claimed-but-unsent items due again, recomputed from the messages actually sent.

    Each update is guarded by the value the claim set, so an item that changed since (renewed,
    answered, claimed anew) is left alone.
    """
    mt: Any = EmailMessage.__table__
    used = or_(mt.c.status == SendStatus.SENT.value, mt.c.status == SendStatus.BOUNCED.value)
    reminders = [(s, p, st) for k, s, p, _, st in items if k is Kind.RENEWAL_REMINDER]
    if reminders:
        ct: Any = Consent.__table__
        et: Any = ConsentEvent.__table__
        # The smallest stage sent in the current validity period, which began with the consent's
        # latest event (for a given consent: its grant, renewal or import).
        period_start = (
            select(et.c.recorded_at)
            .where(et.c.id == ct.c.last_event_id)
            .correlate(ct)
            .scalar_subquery()
        )
        smallest_sent = (
            select(func.min(mt.c.stage))
            .where(
                mt.c.subject_id == ct.c.subject_id,
                mt.c.purpose_id == ct.c.purpose_id,
                mt.c.kind == Kind.RENEWAL_REMINDER.value,
                used,
                mt.c.created_at >= period_start,
            )
            .correlate(ct)
            .scalar_subquery()
        )
        session.execute(
            update(ct)
            .where(
                ct.c.subject_id == bindparam("b_sid"),
                ct.c.purpose_id == bindparam("b_pid"),
                ct.c.reminder_stage == bindparam("b_stage"),
            )
            .values(reminder_stage=smallest_sent),
            [{"b_sid": s, "b_pid": p, "b_stage": st} for s, p, st in reminders],
        )
    rt: Any = ConsentRequest.__table__
    followups = [(r, st) for k, _, _, r, st in items if k is Kind.COLLECTION_FOLLOWUP]
    if followups:
        mine = and_(mt.c.request_id == rt.c.id, mt.c.kind == Kind.COLLECTION_FOLLOWUP.value, used)
        session.execute(
            update(rt)
            .where(
                rt.c.id == bindparam("b_rid"),
                rt.c.status == RequestStatus.OPEN.value,
                rt.c.followups_sent == bindparam("b_n"),
            )
            .values(
                followups_sent=select(func.count()).where(mine).correlate(rt).scalar_subquery(),
                last_sent_at=select(func.max(mt.c.created_at))
                .where(mine)
                .correlate(rt)
                .scalar_subquery(),
            ),
            [{"b_rid": r, "b_n": n} for r, n in followups],
        )
    reconsents = [r for k, _, _, r, _ in items if k is Kind.RECONSENT_REQUEST]
    if reconsents:
        mine = and_(mt.c.request_id == rt.c.id, mt.c.kind == Kind.RECONSENT_REQUEST.value, used)
        session.execute(
            update(rt)
            .where(rt.c.id == bindparam("b_rid"), rt.c.status == RequestStatus.OPEN.value)
            .values(
                last_sent_at=select(func.max(mt.c.created_at))
                .where(mine)
                .correlate(rt)
                .scalar_subquery()
            ),
            [{"b_rid": r} for r in reconsents],
        )


def release_stale_claims(
    kinds: Sequence[Kind],
    *,
    lease: timedelta | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    chunk: int = 1000,
    engine: Engine | None = None,
) -> Batch:
    """Claims older than the lease never got an outcome (a crash between send and record):
    mark them ``deferred`` (outcome unknown) and make their items due again. See the module
    docstring for the at-least-once window this implies."""
    if lease is None:
        lease = timedelta(minutes=get_settings().mail_claim_lease_minutes)
    cutoff = utcnow() - lease
    batch = Batch()
    kind_values = [k.value for k in kinds]
    while True:
        with _session(engine, dry_run) as s:
            stmt = (
                select(
                    EmailMessage.id,
                    EmailMessage.kind,
                    EmailMessage.subject_id,
                    EmailMessage.purpose_id,
                    EmailMessage.request_id,
                    EmailMessage.stage,
                    EmailMessage.message_id,
                    Subject.subject_ref,
                    Purpose.key,
                )
                .join(Subject, col(Subject.id) == EmailMessage.subject_id)
                .join(Purpose, col(Purpose.id) == EmailMessage.purpose_id)
                .where(
                    EmailMessage.status == _CLAIMED,
                    col(EmailMessage.created_at) < cutoff,
                    col(EmailMessage.kind).in_(kind_values),
                )
                .order_by(col(EmailMessage.id))
                .limit(chunk)
            )
            if not dry_run:
                stmt = stmt.with_for_update(skip_locked=True, of=EmailMessage)  # type: ignore[arg-type]
            rows = s.exec(stmt).all()
            for r in rows:
                batch.add(r.key, "claims_released")
            batch.seen += len(rows)
            if dry_run or not rows:
                return batch
            table = EmailMessage.__table__
            s.execute(
                update(table)  # type: ignore[arg-type]
                .where(table.c.id.in_([r.id for r in rows]))  # type: ignore[attr-defined]
                .values(
                    status=SendStatus.DEFERRED.value,
                    error="claim expired before its outcome was recorded: outcome unknown",
                )
            )
            _undo_claims(
                s, [(Kind(r.kind), r.subject_id, r.purpose_id, r.request_id, r.stage) for r in rows]
            )
            _audit(
                s,
                [
                    (
                        "email.claim_expired",
                        r.subject_ref,
                        r.key,
                        {
                            "kind": r.kind,
                            "message_id": r.message_id,
                            "stage": r.stage,
                            "request_id": r.request_id,
                        },
                    )
                    for r in rows
                ],
                run_id,
            )
        if len(rows) < chunk:
            return batch


def _date(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d")


# --------------------------------------------------------------------------------------------
# Renewal reminders
# --------------------------------------------------------------------------------------------


def parse_stages(value: str | Sequence[int] | None) -> tuple[int, ...]:
    """Reminder stages in days, nearest first: ``"30,7,1"`` -> ``(1, 7, 30)``."""
    if value is None:
        value = get_settings().reminder_stages
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            numbers = [int(v) for v in items]
        except ValueError:
            raise ValueError(f"bad reminder stages {value!r}: use days, e.g. 30,7,1") from None
    else:
        numbers = [int(v) for v in value]
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"bad reminder stages {value!r}: give positive numbers of days")
    return tuple(sorted(set(numbers)))


def _reminder_due(as_of: datetime, stages: tuple[int, ...]) -> tuple[Any, Any]:
    """(condition, nearest stage): a given consent whose validity ends within the largest stage
    and that has not yet had the nearest stage due (or a nearer one). Only the nearest due stage
    is sent, so a run that missed earlier stages sends one reminder, not several."""
    nearest = case(
        *[(col(Consent.valid_until) <= as_of + timedelta(days=d), d) for d in stages],
        else_=None,
    )
    due = and_(
        Consent.state == State.GIVEN.value,
        col(Consent.valid_until) > as_of,
        col(Consent.valid_until) <= as_of + timedelta(days=stages[-1]),
        or_(col(Consent.reminder_stage).is_(None), col(Consent.reminder_stage) > nearest),
    )
    return due, nearest


def remind_batch(
    mailer: mail.Mailer | None,
    *,
    as_of: datetime,
    stages: tuple[int, ...],
    size: int,
    cursor: int = 0,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> Batch:
    """Send the due renewal reminders among the next ``size`` consents after ``cursor``."""
    now = utcnow()
    batch = Batch()
    with _session(engine, dry_run) as s:
        infos = _purpose_ids(s, purposes_)
        due, nearest = _reminder_due(as_of, stages)
        rows = _due_rows(
            s,
            batch,
            Consent,
            due,
            [
                Consent.id,
                Consent.subject_id,
                Consent.purpose_id,
                Consent.valid_until,
                nearest.label("stage"),
            ],
            cursor=cursor,
            size=size,
            dry_run=dry_run,
            purpose_ids=None if purposes_ is None else list(infos),
            title_version=Consent.purpose_version,
        )
        claims = [_reminder_claim(s, r, as_of) for r in _mailable(s, batch, rows, dry_run)]
        _write_claims(s, claims, run_id=run_id, now=now)
    return _deliver(mailer, claims, batch, run_id=run_id, engine=engine)


def _reminder_claim(session: Session, r: Any, as_of: datetime) -> Claim:
    revoke_url = _link(session, LinkAction.REVOKE, r.subject_id, r.purpose_id)
    return _new_claim(
        Kind.RENEWAL_REMINDER,
        r,
        stage=r.stage,
        unsubscribe_url=revoke_url,
        context={
            "purpose_title": r.title,
            "valid_until": _date(r.valid_until),
            "days_left": max(1, math.ceil((r.valid_until - as_of) / timedelta(days=1))),
            "renew_url": _link(session, LinkAction.RENEW, r.subject_id, r.purpose_id),
            "revoke_url": revoke_url,
            "preferences_url": _link(session, LinkAction.PREFERENCES, r.subject_id, None),
        },
    )


# --------------------------------------------------------------------------------------------
# Collection follow-ups
# --------------------------------------------------------------------------------------------


def followup_batch(
    mailer: mail.Mailer | None,
    *,
    as_of: datetime,
    after_days: int,
    max_followups: int,
    size: int,
    cursor: int = 0,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> Batch:
    """Follow up open collection requests unanswered for ``after_days`` (since the request or the
    last follow-up), up to ``max_followups``; after the last one (plus ``after_days``) the request
    lapses. A request whose subject cannot be emailed (no address, suppressed) lapses when its
    next follow-up falls due, since no further follow-up can be sent.

    A lapsed request is closed (status ``lapsed``, ``closed_at``, one audit entry each); the
    consent itself stays ``requested``: nobody answered, so nothing was given or refused.
    """
    now = utcnow()
    batch = Batch()
    claims: list[Claim] = []
    lapses: list[tuple[Any, str]] = []
    cr = ConsentRequest
    due = and_(
        cr.kind == RequestKind.COLLECTION.value,
        cr.status == RequestStatus.OPEN.value,
        func.coalesce(cr.last_sent_at, cr.requested_at) <= as_of - timedelta(days=after_days),
    )
    with _session(engine, dry_run) as s:
        infos = _purpose_ids(s, purposes_)
        rows = _due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.subject_id, cr.purpose_id, cr.requested_at, cr.followups_sent],
            cursor=cursor,
            size=size,
            dry_run=dry_run,
            purpose_ids=None if purposes_ is None else list(infos),
            title_version=cr.purpose_version,
        )
        suppressed = _suppression(s, rows)
        for r in rows:
            if r.followups_sent >= max_followups:
                lapses.append((r, f"no answer after {r.followups_sent} follow-up(s)"))
                continue
            if not r.email:
                lapses.append((r, "no email address to follow up"))
                continue
            if suppressed(r.email):
                lapses.append((r, "email address suppressed"))
                continue
            if dry_run:
                batch.add(r.key, SendStatus.SENT.value)
                continue
            claims.append(_followup_claim(s, r, max_followups))
        for r, _ in lapses:
            batch.add(r.key, "lapsed")
        if not dry_run:
            _write_claims(s, claims, run_id=run_id, now=now)
            _lapse(s, lapses, now, run_id)
    return _deliver(mailer, claims, batch, run_id=run_id, engine=engine)


def _followup_claim(session: Session, r: Any, max_followups: int) -> Claim:
    number = r.followups_sent + 1
    return _new_claim(
        Kind.COLLECTION_FOLLOWUP,
        r,
        stage=number,
        request_id=r.id,
        context={
            "purpose_title": r.title,
            "requested_on": _date(r.requested_at),
            "grant_url": _link(session, LinkAction.GRANT, r.subject_id, r.purpose_id),
            "preferences_url": _link(session, LinkAction.PREFERENCES, r.subject_id, None),
            "last": number >= max_followups,
        },
    )


def _close_lapsed(session: Session, request_ids: list[int], now: datetime) -> None:
    """Close the requests among ``request_ids`` that are still open as lapsed."""
    table = ConsentRequest.__table__
    session.execute(
        update(table)  # type: ignore[arg-type]
        .where(
            table.c.id.in_(request_ids),  # type: ignore[attr-defined]
            table.c.status == RequestStatus.OPEN.value,  # type: ignore[attr-defined]
        )
        .values(status=RequestStatus.LAPSED.value, closed_at=now)
    )


def _lapse(
    session: Session,
    items: list[tuple[Any, str]],
    now: datetime,
    run_id: str | None,
) -> None:
    """Close collection requests as lapsed, one audit entry each (written last)."""
    if not items:
        return
    _close_lapsed(session, [r.id for r, _ in items], now)
    _audit(
        session,
        [
            (
                "request.lapsed",
                r.subject_ref,
                r.key,
                {
                    "request_id": r.id,
                    "kind": RequestKind.COLLECTION.value,
                    "requested_at": r.requested_at.isoformat(),
                    "followups_sent": r.followups_sent,
                    "reason": why,
                },
            )
            for r, why in items
        ],
        run_id,
    )


# --------------------------------------------------------------------------------------------
# Re-consent after a material revision
# --------------------------------------------------------------------------------------------


def _stale_condition(infos: dict[int, PurposeInfo]) -> Any:
    """Given consents resting on a version older than their purpose's latest material one."""
    revised = [i for i in infos.values() if i.material_version > 1]
    if not revised:
        return None
    return and_(
        Consent.state == State.GIVEN.value,
        or_(
            *(
                and_(Consent.purpose_id == i.id, col(Consent.purpose_version) < i.material_version)
                for i in revised
            )
        ),
    )


def reconsent_open_batch(
    mailer: mail.Mailer | None,
    *,
    as_of: datetime,
    deadline_days: int,
    size: int,
    cursor: int = 0,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> Batch:
    """Open a re-consent request (with a deadline) for each consent that rests on a version a
    material revision superseded and has not been asked about that revision, and email it.

    Once per consent and revision: no second request while one is open, and none if a request
    already asked for the current material version. Editorial revisions change nothing here,
    because only material versions count. The deadline runs from the later of now and
    ``as_of``.
    """
    now = utcnow()
    deadline = max(now, as_of) + timedelta(days=deadline_days)
    batch = Batch()
    with _session(engine, dry_run) as s:
        infos = _purpose_ids(s, purposes_)
        stale = _stale_condition(infos)
        if stale is None:
            return batch
        cr = ConsentRequest
        material = case(
            *[(Consent.purpose_id == i.id, i.material_version) for i in infos.values()],
            else_=None,
        )
        asked = (
            select(cr.id)
            .where(
                cr.subject_id == Consent.subject_id,
                cr.purpose_id == Consent.purpose_id,
                cr.kind == RequestKind.RECONSENT.value,
                or_(cr.status == RequestStatus.OPEN.value, col(cr.purpose_version) >= material),
            )
            .exists()
        )
        due = and_(stale, ~asked)
        rows = _due_rows(
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
            dry_run=dry_run,
            title_version=Purpose.current_version,
        )
        for r in rows:
            batch.add(r.key, "requested")
        if not rows:
            return batch
        mailable = _mailable(s, batch, rows, dry_run)
        if dry_run:
            return batch
        table = cr.__table__
        opened = s.execute(
            insert(table).returning(  # type: ignore[arg-type]
                table.c.id,  # type: ignore[attr-defined]
                sort_by_parameter_order=True,
            ),
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
        request_ids = {
            (r.subject_id, r.purpose_id): o.id for r, o in zip(rows, opened, strict=True)
        }
        claims = [
            _reconsent_claim(s, r, request_ids[(r.subject_id, r.purpose_id)], deadline)
            for r in mailable
        ]
        _write_claims(s, claims, run_id=run_id, now=now)
        _audit(
            s,
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
    return _deliver(mailer, claims, batch, run_id=run_id, engine=engine)


def _reconsent_claim(session: Session, r: Any, request_id: int, deadline: datetime) -> Claim:
    revoke_url = _link(session, LinkAction.REVOKE, r.subject_id, r.purpose_id)
    return _new_claim(
        Kind.RECONSENT_REQUEST,
        r,
        request_id=request_id,
        unsubscribe_url=revoke_url,
        context={
            "purpose_title": r.title,
            "deadline": _date(deadline),
            "grant_url": _link(session, LinkAction.GRANT, r.subject_id, r.purpose_id),
            "revoke_url": revoke_url,
            "preferences_url": _link(session, LinkAction.PREFERENCES, r.subject_id, None),
        },
    )


def reconsent_email_batch(
    mailer: mail.Mailer | None,
    *,
    as_of: datetime,
    size: int,
    cursor: int = 0,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> Batch:
    """Send re-consent emails that an earlier attempt could not (4xx, timeout, server down),
    for open requests whose deadline has not passed."""
    batch = Batch()
    cr = ConsentRequest
    due = and_(
        cr.kind == RequestKind.RECONSENT.value,
        cr.status == RequestStatus.OPEN.value,
        col(cr.last_sent_at).is_(None),
        col(cr.deadline) > as_of,
    )
    now = utcnow()
    with _session(engine, dry_run) as s:
        infos = _purpose_ids(s, purposes_)
        rows = _due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.subject_id, cr.purpose_id, cr.deadline],
            cursor=cursor,
            size=size,
            dry_run=dry_run,
            purpose_ids=None if purposes_ is None else list(infos),
            title_version=cr.purpose_version,
        )
        claims = [
            _reconsent_claim(s, r, r.id, r.deadline) for r in _mailable(s, batch, rows, dry_run)
        ]
        _write_claims(s, claims, run_id=run_id, now=now)
    return _deliver(mailer, claims, batch, run_id=run_id, engine=engine)


def reconsent_deadline_batch(
    *,
    as_of: datetime,
    size: int,
    cursor: int = 0,
    purposes_: list[str] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> Batch:
    """At the deadline: consents still on the superseded version become invalidated (through
    ``lifecycle.invalidate_stale``, which propagates them like a withdrawal) and the request
    lapses. A subject who renewed or granted on the new version, refused or revoked, has
    already answered the request, which is then no longer open."""
    now = utcnow()
    batch = Batch()
    cr = ConsentRequest
    due = and_(
        cr.kind == RequestKind.RECONSENT.value,
        cr.status == RequestStatus.OPEN.value,
        col(cr.deadline) <= as_of,
    )
    with _session(engine, dry_run) as s:
        infos = _purpose_ids(s, purposes_)
        rows = _due_rows(
            s,
            batch,
            cr,
            due,
            [cr.id, cr.kind, cr.subject_id, cr.purpose_id, cr.requested_at, cr.followups_sent],
            cursor=cursor,
            size=size,
            dry_run=dry_run,
            purpose_ids=None if purposes_ is None else list(infos),
        )
        if not rows:
            return batch
        by_purpose: dict[int, list[int]] = {}
        for r in rows:
            by_purpose.setdefault(r.purpose_id, []).append(r.subject_id)
            batch.add(r.key, "lapsed")
        all_infos = infos if purposes_ is None else _purpose_ids(s, None)
        if dry_run:
            stale = _stale_condition(all_infos)
            hooks = _subscribers(s)
            for purpose_id, sids in by_purpose.items():
                if stale is None:
                    break
                n = s.exec(
                    select(func.count())
                    .select_from(Consent)
                    .where(
                        stale, Consent.purpose_id == purpose_id, col(Consent.subject_id).in_(sids)
                    )
                ).one()
                key = all_infos[purpose_id].key
                batch.add(key, "invalidated", n)
                batch.add(key, "webhooks_enqueued", n * hooks.get(purpose_id, 0))
            return batch
        _close_lapsed(s, [r.id for r in rows], now)
        invalidated: dict[tuple[int, str], str] = {}
        for purpose_id, sids in by_purpose.items():
            changes = lifecycle.invalidate_stale(
                s,
                all_infos[purpose_id].key,
                subject_ids=sids,
                limit=len(sids),
                actor=lifecycle.system_actor(run_id),
            )
            for change in changes:
                batch.add(change.purpose, "invalidated")
                batch.add(change.purpose, "webhooks_enqueued", change.deliveries)
                invalidated[(purpose_id, change.subject_ref)] = str(change.event_id)
        _audit(
            s,
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
    return batch

"""The email protocol of the sweeps: claim, send, record.

Emails (renewal reminders, collection follow-ups, re-consent requests) are claimed before they
are sent, so that two concurrent runs never email the same item and a re-run does not resend:

1. *claim* (one transaction): lock the due items' subjects (``FOR UPDATE SKIP LOCKED``; on SQLite
   the whole database is held), re-check that each is still due (``due_rows``), insert an
   ``email_message`` row with status ``claimed`` and a fresh Message-ID, and advance the item
   (``Consent.reminder_stage`` or ``ConsentRequest.followups_sent``/``last_sent_at``) so it is no
   longer due (``write_claims``); commit.
2. *send* over the mailer's pooled connections, outside any transaction (``deliver``).
3. *record*, as soon as the server answers each message (``record_results``, run by
   ``_recorder.Recorder`` in a thread of its own while the other connections keep sending; the
   answers that arrive while a record transaction runs are written together by the next): the
   message becomes ``sent``, ``bounced`` (5xx: the address is suppressed, and every later
   claim skips it), ``deferred`` (4xx,
   timeout, lost connection, server down: the item's advance is undone from the message log, so
   it is due for the next run) or ``failed`` (this message alone cannot be sent as things
   stand: a non-ASCII address on a server without SMTPUTF8, a stored address that breaks the
   address rule, a message that could not be built; the reason is recorded, the item stays
   advanced like a sent one so no run repeats it, the address is not suppressed); one audit
   entry per message, carrying the run id. A connection sends its next message only once its
   previous outcome is committed.

One message's fate never changes another's: each message is built on its own (a failure to
build one is its own ``failed``), the mailer returns one result per message and keeps the
accepted ones ``sent`` even when sending stops, and every result is recorded, exactly once, in
step 3. A record the database refuses is tried again without the server's text; only a
database that refuses that too stops the batch (the rest are still tried; what could not be
recorded stays ``claimed``). Each message is built while the earlier ones are being sent
(``Mailer.send`` takes them lazily). Only a template error (raised while building: the messages
built before it are sent and recorded, the rest deferred; usually the first message, since a
template is the same for the batch) or an unavailable server fails the batch, after recording
what happened to each message.

Cancels: a KeyboardInterrupt or Prefect's cancel (TerminationSignal) while a batch is sending
stops the sending at once; every answer already received is recorded (the records are waited
for, never cut short) before the cancel goes on, a message in flight at that instant is
recorded ``deferred`` (outcome unknown: due again), and the messages not yet sent ``deferred``.

At-least-once window: only a hard kill (SIGKILL, a dead machine, a lost database) can leave a
message ``claimed``: the messages in flight on the pool's connections at that instant (at most
``CONSENTFLOW_SMTP_POOL_SIZE``, each sent but not yet answered, or answered and not yet
recorded). After ``CONSENTFLOW_MAIL_CLAIM_LEASE_MINUTES`` a later run releases such claims as
``deferred`` (outcome unknown) and the item becomes due again, so those people (at most one per
connection per kill) may get the same email twice (``release_stale_claims``). The alternative
(never resending) could silently lose a reminder; for consent emails a rare duplicate is the
lesser harm. The lease must exceed the time one message takes to send and record.

Privacy: a claim's address is never logged, audited or shown in its ``repr``; errors from the
mail server are redacted (``mail.redact``) before they are stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from consentflow import db, links, mail
from consentflow.keys import reference_key
from consentflow.links import LinkAction
from consentflow.mail import Kind, MailUnavailable, SendResult, SendStatus
from consentflow.models import EmailMessage, EmailSuppression, Purpose, Subject, utcnow
from consentflow.settings import get_settings
from consentflow.sweeps._batching import (
    Batch,
    Counts,
    audit_items,
    lock_subjects,
    table,
    transaction,
)
from consentflow.sweeps._context import SweepContext
from consentflow.sweeps._recorder import Recorder
from consentflow.sweeps._undo import ClaimKey, advance_claims, undo_claims

CLAIMED = "claimed"


@dataclass
class Claim:
    """One email about to be sent. ``address`` is never logged or audited."""

    kind: Kind
    subject_id: int
    subject_ref: str
    purpose_id: int
    purpose_key: str
    address: str = field(repr=False)
    locale: str | None
    context: dict[str, Any] = field(repr=False)
    message_id: str = ""
    stage: int | None = None
    request_id: int | None = None
    unsubscribe_url: str | None = field(default=None, repr=False)
    row_id: int | None = None

    @property
    def key(self) -> ClaimKey:
        """What ``undo_claims`` needs to make the item due again."""
        return ClaimKey(self.kind, self.subject_id, self.purpose_id, self.request_id, self.stage)


# --------------------------------------------------------------------------------------------
# Who can be emailed, and what a claim says
# --------------------------------------------------------------------------------------------


def _suppressed(session: Session, secret: bytes, addresses: Sequence[str]) -> set[str]:
    """The hashes among ``addresses`` that are on the suppression list."""
    hashes = {mail.address_hash(secret, a) for a in addresses}
    if not hashes:
        return set()
    stmt = select(EmailSuppression.address_hash).where(
        col(EmailSuppression.address_hash).in_(sorted(hashes))
    )
    return set(session.exec(stmt).all())


def suppression(session: Session, rows: Sequence[Any]) -> Callable[[str], bool]:
    """Whether an address (one of ``rows``' ``email``) is on the suppression list: one query
    for the whole page."""
    addresses = [r.email for r in rows if r.email]
    if not addresses:
        return lambda address: False
    secret = reference_key(session)
    hashes = _suppressed(session, secret, addresses)
    return lambda address: mail.address_hash(secret, address) in hashes


def mailable(session: Session, batch: Batch, rows: Sequence[Any], dry_run: bool) -> list[Any]:
    """The rows (of ``due_rows``) an email can go to now, in order; the others are counted
    (``no_email``, ``suppressed``). A dry run counts those it would send as sent and returns
    none, since nothing is claimed."""
    suppressed = suppression(session, rows)
    found = []
    for r in rows:
        if not r.email:
            batch.add(r.key, "no_email")
        elif suppressed(r.email):
            batch.add(r.key, "suppressed")
        elif dry_run:
            batch.add(r.key, SendStatus.SENT.value)
        else:
            found.append(r)
    return found


def link(
    session: Session,
    action: LinkAction,
    subject_id: int,
    purpose_id: int | None,
    *,
    choice: int | None = None,
) -> str:
    """A fresh signed link for an email (``choice``: see ``links.issue``)."""
    return links.url(links.issue(session, action, subject_id, purpose_id, choice=choice))


def new_claim(kind: Kind, r: Any, **fields: Any) -> Claim:
    """A claim on the item in ``r`` (a row of ``due_rows``), under a fresh Message-ID."""
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


# --------------------------------------------------------------------------------------------
# 1. claim
# --------------------------------------------------------------------------------------------


def write_claims(
    session: Session, claims: list[Claim], *, run_id: str | None, now: datetime
) -> None:
    """Step 1's writes, in the caller's transaction (which commits before anything is sent): a
    ``claimed`` message per claim, and each item advanced so that it is no longer due."""
    if not claims:
        return
    _insert_claims(session, claims, run_id=run_id, now=now)
    advance_claims(session, [c.key for c in claims], now)


def _insert_claims(
    session: Session, claims: list[Claim], *, run_id: str | None, now: datetime
) -> None:
    messages = table(EmailMessage)
    rows = session.execute(
        messages.insert().returning(messages.c.id, sort_by_parameter_order=True),
        [
            {
                "message_id": c.message_id,
                "subject_id": c.subject_id,
                "purpose_id": c.purpose_id,
                "request_id": c.request_id,
                "kind": c.kind.value,
                "stage": c.stage,
                "status": CLAIMED,
                "run_id": run_id,
                "created_at": now,
            }
            for c in claims
        ],
    ).all()
    for claim, row in zip(claims, rows, strict=True):
        claim.row_id = row.id


# --------------------------------------------------------------------------------------------
# 2. send, 3. record
# --------------------------------------------------------------------------------------------


def deliver(ctx: SweepContext, claims: list[Claim], batch: Batch) -> Batch:
    """Steps 2 and 3, once the claims are committed: send them, record each outcome as the
    server answers it and count it in ``batch``; raise if the server was unavailable, a
    template is broken, a cancel came or recording failed for good (after recording what can
    be: nothing the server accepted is ever recorded as anything but sent)."""
    if not claims:
        return batch
    assert ctx.mailer is not None, "a real run needs a mailer"
    counts: Counts = Counter()

    def record(items: list[tuple[int, SendResult]]) -> None:
        outcomes = record_results(ctx, [claims[i] for i, _ in items], [r for _, r in items])
        counts.update(outcomes)

    recorder = Recorder(record, len(claims), lambda i: claims[i].message_id)
    report: mail.SendReport | None = None
    failure: BaseException | None = None
    outgoing: list[int] = []  # message number -> claim index

    def built() -> Iterator[mail.Outgoing]:
        """Each claim's message, built as the mailer takes them (while earlier ones are sent)."""
        for index, claim in enumerate(claims):
            message = _build(claim)
            if isinstance(message, SendResult):
                recorder.submit(index, message)
            else:
                outgoing.append(index)
                yield message

    try:
        report = ctx.mailer.send(
            built(),
            on_result=lambda i, r: recorder.submit(outgoing[i], r),
            stop=recorder.broken,
        )
        for index, result in zip(outgoing, report.results, strict=True):
            recorder.submit(index, result)  # those the callback did not hand over
    except BaseException as exc:  # recorded below (each unsent one deferred), then re-raised
        failure = exc
    unsent = SendResult(SendStatus.DEFERRED, None, f"not sent: {_exc_text(failure)}")
    recorder.finish(lambda index: unsent)
    if failure is not None:
        raise failure
    if recorder.failure is not None:
        raise recorder.failure
    if report is not None and report.unavailable:
        raise MailUnavailable(report.unavailable)
    batch.counts.update(counts)
    return batch


def _build(claim: Claim) -> mail.Outgoing | SendResult:
    """One claim's message, or its ``failed`` result when this message alone cannot be built.
    A template error is the same for the whole batch: it is raised (the messages not yet built
    are deferred)."""
    rendered = mail.render(claim.kind, claim.locale, claim.context)
    try:
        return mail.compose(
            rendered,
            to=claim.address,
            message_id=claim.message_id,
            unsubscribe_url=claim.unsubscribe_url,
        )
    except Exception as exc:
        return SendResult(SendStatus.FAILED, None, f"not sent: {_exc_text(exc)}")


def _exc_text(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return mail.redact(f"{exc.__class__.__name__}: {exc}")


def record_results(ctx: SweepContext, claims: list[Claim], results: Sequence[SendResult]) -> Counts:
    """Step 3 (``deliver`` calls it for the outcomes that arrived since its previous record):
    mark each claimed message, suppress hard bounces, undo deferred claims, audit (with
    ``ctx.run_id``), in one transaction on ``ctx.engine``, under the subjects' locks (on
    PostgreSQL; SQLite's writer already holds the whole database)."""
    now = utcnow()
    counts: Counts = Counter()
    pairs = list(zip(claims, results, strict=True))
    with db.session_scope(ctx.engine) as s:
        if db.is_postgres(s):
            lock_subjects(s, [c.subject_id for c in claims], skip_locked=False)
        _mark(s, pairs, now)
        bounced = [(c, r) for c, r in pairs if r.status is SendStatus.BOUNCED]
        if bounced:
            secret = reference_key(s)
            _suppress(s, [(mail.address_hash(secret, c.address), r) for c, r in bounced], now)
        undo_claims(s, [c.key for c, r in pairs if r.status is SendStatus.DEFERRED])
        entries = []
        for c, r in pairs:
            counts[(c.purpose_key, r.status.value)] += 1
            entries.append((f"email.{r.status.value}", c.subject_ref, c.purpose_key, _detail(c, r)))
        audit_items(s, entries, ctx.run_id)
    return counts


def _mark(session: Session, pairs: list[tuple[Claim, SendResult]], now: datetime) -> None:
    """Each claimed message's outcome (``sent_at`` only when sent)."""
    session.execute(
        _MARK,
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


_MESSAGES = table(EmailMessage)
_MARK = (
    _MESSAGES.update()
    .where(_MESSAGES.c.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), sent_at=bindparam("b_sent"), error=bindparam("b_error"))
)


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


def _detail(c: Claim, r: SendResult) -> dict[str, Any]:
    """An email's audit detail: never its address."""
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
    return detail


# --------------------------------------------------------------------------------------------
# Claims that never got an outcome
# --------------------------------------------------------------------------------------------


def release_stale_claims(
    ctx: SweepContext,
    kinds: Sequence[Kind],
    *,
    lease: timedelta | None = None,
    chunk: int = 1000,
) -> Batch:
    """Claims older than the lease (default ``CONSENTFLOW_MAIL_CLAIM_LEASE_MINUTES``) never got
    an outcome (a crash between send and record): mark them ``deferred`` (outcome unknown) and
    make their items due again, ``chunk`` claims per transaction. See the module docstring for
    the at-least-once window this implies. A dry run counts them and changes nothing."""
    if lease is None:
        lease = timedelta(minutes=get_settings().mail_claim_lease_minutes)
    cutoff = utcnow() - lease
    batch = Batch()
    while True:
        with transaction(ctx.engine, ctx.dry_run) as s:
            rows = _stale_claims(s, kinds, cutoff, chunk, lock=not ctx.dry_run)
            for r in rows:
                batch.add(r.key, "claims_released")
            batch.seen += len(rows)
            if ctx.dry_run or not rows:
                return batch
            _release(s, rows, ctx.run_id)
        if len(rows) < chunk:
            return batch


def _stale_claims(
    session: Session, kinds: Sequence[Kind], cutoff: datetime, chunk: int, *, lock: bool
) -> Sequence[Any]:
    """Up to ``chunk`` claims of ``kinds`` made before ``cutoff``, oldest first (locked, and
    others' locked ones skipped, when ``lock``)."""
    stmt = (
        sa_select(
            col(EmailMessage.id),
            col(EmailMessage.kind),
            col(EmailMessage.subject_id),
            col(EmailMessage.purpose_id),
            col(EmailMessage.request_id),
            col(EmailMessage.stage),
            col(EmailMessage.message_id),
            col(Subject.subject_ref),
            col(Purpose.key),
        )
        .join(Subject, col(Subject.id) == EmailMessage.subject_id)
        .join(Purpose, col(Purpose.id) == EmailMessage.purpose_id)
        .where(
            col(EmailMessage.status) == CLAIMED,
            col(EmailMessage.created_at) < cutoff,
            col(EmailMessage.kind).in_([k.value for k in kinds]),
        )
        .order_by(col(EmailMessage.id))
        .limit(chunk)
    )
    if lock:
        stmt = stmt.with_for_update(skip_locked=True, of=table(EmailMessage))
    return session.execute(stmt).all()


def _release(session: Session, rows: Sequence[Any], run_id: str | None) -> None:
    """Mark stale claims deferred, make their items due again, and audit each."""
    messages = table(EmailMessage)
    session.execute(
        messages.update()
        .where(messages.c.id.in_([r.id for r in rows]))
        .values(
            status=SendStatus.DEFERRED.value,
            error="claim expired before its outcome was recorded: outcome unknown",
        )
    )
    undo_claims(
        session,
        [ClaimKey(Kind(r.kind), r.subject_id, r.purpose_id, r.request_id, r.stage) for r in rows],
    )
    audit_items(
        session,
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

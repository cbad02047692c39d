"""Batching shared by every sweep: what a batch returns, how batches are looped and retried, the
transaction a batch runs in (rolled back for a dry run), and how the next page of due items is
read under its subjects' locks.

Each sweep handles one batch in transactions of its own and returns a ``Batch``: counts per
(purpose, outcome), how many due items it looked at, and where the next batch starts. With a
dry run the same selection and classification runs, nothing is written, and the counts say
exactly what a real run would have done (same outcome names).

Locking: subjects are locked in id order, as the ledger does, with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (on SQLite the writer holds the whole database), so concurrent runs share the work
and an item another run holds is skipped, not waited for. A dry run locks nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, col, select

from consentflow import audit, db, purposes
from consentflow.mail import MailUnavailable
from consentflow.models import (
    ActorType,
    Channel,
    ConsentRequest,
    Purpose,
    PurposeVersion,
    RequestStatus,
    Subject,
    System,
    SystemPurpose,
)
from consentflow.purposes import PurposeInfo

Counts = Counter[tuple[str, str]]


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
def transaction(engine: Engine | None, dry_run: bool) -> Iterator[Session]:
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


def table(model: type[SQLModel]) -> Table:
    """The Core table behind a model, for bulk inserts and updates."""
    found = sa_inspect(model).local_table
    assert isinstance(found, Table)
    return found


def lock_subjects(session: Session, ids: Sequence[int], *, skip_locked: bool = True) -> set[int]:
    """Lock subject rows in id order (as the ledger does); others' locked rows are skipped."""
    if not ids:
        return set()
    stmt = (
        select(col(Subject.id))
        .where(col(Subject.id).in_(sorted(set(ids))))
        .order_by(col(Subject.id))
        .with_for_update(skip_locked=skip_locked)
    )
    return {i for i in session.exec(stmt).all() if i is not None}


def due_rows(
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
    version whose title it shows; the rows then also carry ``email``, ``locale`` and that
    version's ``title``, ``description`` and per-locale ``texts`` (``email_title`` reads them).

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
    locked = set(subject_ids) if dry_run else lock_subjects(session, subject_ids)
    extra: list[Any] = [Subject.subject_ref, Purpose.key]
    if title_version is not None:
        extra += [
            Subject.email,
            Subject.locale,
            PurposeVersion.title,
            PurposeVersion.description,
            PurposeVersion.texts,
        ]
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


def email_title(row: Any) -> str:
    """The purpose title an email shows: in the recipient's locale (``row.locale``), falling
    back to the default title (``purposes.title_for``); ``row`` is a ``due_rows`` row read with
    ``title_version``."""
    return purposes.title_for(row, row.locale)


def close_lapsed(session: Session, request_ids: list[int], now: datetime) -> None:
    """Close the requests among ``request_ids`` that are still open as lapsed."""
    requests = table(ConsentRequest)
    session.execute(
        requests.update()
        .where(
            requests.c.id.in_(request_ids),
            requests.c.status == RequestStatus.OPEN.value,
        )
        .values(status=RequestStatus.LAPSED.value, closed_at=now)
    )


def purpose_ids(session: Session, keys: list[str] | None) -> dict[int, PurposeInfo]:
    """The purposes named by ``keys`` (None: all), by id; an unknown key raises ``NotFound``."""
    return {i.id: i for i in purposes.info(session, keys).values()}


def subscribers(session: Session) -> dict[int, int]:
    """Systems with a webhook per purpose id: how many deliveries a withdrawal enqueues."""
    stmt = (
        select(SystemPurpose.purpose_id, func.count())
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(System.webhook_url).is_not(None))
        .group_by(col(SystemPurpose.purpose_id))
    )
    return {pid: n for pid, n in session.exec(stmt).all()}


def audit_items(
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

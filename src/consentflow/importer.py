"""Bulk migration from another consent platform: a CSV of subjects and their consents.

Two passes over the file. The first validates every row and keeps nothing but what duplicate
detection needs, so a file with any bad row can be refused whole, every bad row listed by line.
The second imports in batches, each its own transaction, through the ledger's batch write path:
the same state, history and audit rows as single changes, a few statements per batch. Re-running
the same file changes nothing (subjects and consents already present are left as they are), which
also makes an interrupted import safe to finish by running it again.

Invariants:

- The first pass refuses everything the database would: a control character in any field (NUL
  included: PostgreSQL refuses it), an id breaking the identifier rule
  (``subjects.check_external_id``), a bad address or locale, a value longer than its column
  (each rule reads the limit from the model). So a file that validates imports whole, and
  ``--skip-bad`` imports every other row.
- A row is named by the physical line its record starts on (1 is the header), also after a
  quoted field holding line breaks; a malformed CSV names the line where parsing failed.
- A file with a bad row and no ``skip_bad`` commits nothing, not even an audit entry. Every run
  that commits leaves one ``import.run`` entry with its counts, even one that stops halfway
  (``interrupted``: why; see ``import_file``).
"""

from __future__ import annotations

import contextlib
import csv
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, lifecycle, purposes
from consentflow.actors import column_length, unprintable
from consentflow.errors import ConsentflowError, InvalidInput
from consentflow.keys import reference_key, subject_ref
from consentflow.models import ActorType, Channel, State, Subject, metadata, utcnow
from consentflow.subjects import check_email, check_external_id, check_locale
from consentflow.timeutil import parse_instant

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
COLUMNS = ("external_id", "email", "locale", "purpose", "state", "given_at", "valid_until")


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


@dataclass
class Report:
    rows: int = 0
    subjects_created: int = 0
    consents_created: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    import_id: str = ""


@dataclass(frozen=True)
class Record:
    """One CSV record: the physical line it starts on, its fields by column, and how many
    fields it has beyond the header's (negative: fewer)."""

    line: int
    fields: dict[str, str]
    extra: int


@dataclass(frozen=True)
class Row:
    line: int
    external_id: str
    email: str | None
    locale: str | None
    purpose: str | None
    state: State | None
    given_at: datetime | None
    valid_until: datetime | None


def parse_row(record: Record, known_purposes: set[str], now: datetime) -> Row:
    """Validate one CSV record; raises ``InvalidInput`` with what is wrong.

    Every check the database would make is made here first: no field holds a control character
    (PostgreSQL refuses NUL), and each stored value passes its rule, which holds it to its
    column's length (``subjects.check_external_id``, ``check_email``, ``check_locale``)."""
    if record.extra > 0:
        raise InvalidInput("more fields than the header has")
    v = {k: record.fields.get(k, "").strip() for k in COLUMNS}
    for name, value in v.items():
        bad = unprintable(value)
        if bad is not None:
            raise InvalidInput(f"{name} contains the control character {bad}")
    purpose = v["purpose"] or None
    state = None
    if purpose is not None:
        if purpose not in known_purposes:
            raise InvalidInput(f"unknown purpose {purpose!r}: add it first with `purpose add`")
        if not v["state"]:
            raise InvalidInput("a row with a purpose needs a state")
        try:
            state = State(v["state"])
        except ValueError:
            state = None
        if state not in lifecycle.IMPORTABLE_STATES:
            allowed = ", ".join(sorted(lifecycle.IMPORTABLE_STATES))
            raise InvalidInput(f"bad state {v['state']!r}: use one of {allowed}")
    elif v["state"] or v["given_at"] or v["valid_until"]:
        raise InvalidInput("state, given_at and valid_until need a purpose")
    given_at = parse_instant(v["given_at"], "given_at")
    valid_until = parse_instant(v["valid_until"], "valid_until")
    if given_at and given_at > now:
        raise InvalidInput(f"given_at {v['given_at']!r} is in the future")
    if state is State.EXPIRED and not valid_until:
        raise InvalidInput("an expired consent needs its valid_until (when it ended)")
    if state is State.EXPIRED and valid_until and valid_until > now:
        raise InvalidInput(f"valid_until {v['valid_until']!r} is in the future: not expired yet")
    if valid_until and state not in (State.GIVEN, State.EXPIRED):
        raise InvalidInput(f"valid_until only applies to given or expired consents, not {state}")
    if valid_until and given_at and valid_until <= given_at:
        raise InvalidInput("valid_until must be after given_at")
    if state is not None:
        # One that ended before it arrived here comes in as what it is (effective_state).
        state = lifecycle.effective_state(state, valid_until, now)
    return Row(
        line=record.line,
        external_id=check_external_id(v["external_id"]),
        email=check_email(v["email"]),
        locale=check_locale(v["locale"]),
        purpose=purpose,
        state=state,
        given_at=given_at,
        valid_until=valid_until,
    )


def _records(path: Path, fh: Iterable[str]) -> Iterator[Record]:
    """Each record after the header, named by the physical line it starts on (a quoted field
    may hold line breaks); blank lines are skipped."""
    reader = csv.reader(fh, strict=True)
    start = 1
    try:
        header = next(reader, [])
        _check_header(path, header)
        while True:
            start = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                return
            if not fields:
                continue
            yield Record(start, dict(zip(header, fields, strict=False)), len(fields) - len(header))
    except csv.Error as exc:
        where = reader.line_num if reader.line_num > start else start
        opened = f" (the record starts on line {start})" if where != start else ""
        raise InvalidInput(f"{path}:{where}: malformed CSV: {exc}{opened}") from None


def _check_header(path: Path, header: list[str]) -> None:
    if "external_id" not in header:
        raise InvalidInput(
            f"{path}: the header must name external_id (and {', '.join(COLUMNS[1:])})"
        )
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        shown = ", ".join(repr(h) if unprintable(h) else h for h in unknown)
        raise InvalidInput(f"{path}: unknown column(s) {shown}")


def _reader(path: Path) -> Iterator[Record]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            yield from _records(path, fh)
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a directory: give a CSV file") from None
    except PermissionError:
        raise InvalidInput(f"cannot read {path}: permission denied") from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{path}:{_undecodable_line(path)}: this line is not UTF-8 text"
        ) from None
    except OSError as exc:  # a device, a vanished mount...
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _undecodable_line(path: Path) -> int:
    """The physical line of the first byte that is not UTF-8 (text mode decodes a chunk at a time,
    ahead of the parser, so the parser's line count cannot tell)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(_LINE_BREAK.findall(data, 0, exc.start)) + 1
    return 1


def validate(path: Path, known_purposes: set[str], now: datetime) -> tuple[int, list[RowError]]:
    """First pass: every error by line; conflicting and duplicate rows count as errors."""
    errors: list[RowError] = []
    subjects_seen: dict[str, tuple[int, int]] = {}  # external_id -> (hash of email+locale, line)
    consents_seen: dict[tuple[str, str], int] = {}
    rows = 0
    for record in _reader(path):
        rows += 1
        line = record.line
        try:
            row = parse_row(record, known_purposes, now)
        except ConsentflowError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        profile = hash((row.email, row.locale))
        first = subjects_seen.setdefault(row.external_id, (profile, line))
        if first[0] != profile:
            errors.append(
                RowError(line, f"email or locale differs from line {first[1]} for the same subject")
            )
            continue
        if row.purpose is not None:
            key = (row.external_id, row.purpose)
            if key in consents_seen:
                errors.append(
                    RowError(
                        line,
                        "second consent for the same subject and purpose "
                        f"(line {consents_seen[key]})",
                    )
                )
                continue
            consents_seen[key] = line
    return rows, errors


def import_file(
    engine: Engine,
    path: Path,
    *,
    skip_bad: bool = False,
    propagate: bool = False,
    batch_size: int = 5000,
) -> Report:
    """Validate, then import ``path`` in batches. With bad rows and no ``skip_bad``: nothing.

    Every run that commits anything leaves an ``import.run`` audit entry with its counts, also
    one stopped halfway (the database gone, the file changed since it was validated): that entry
    says ``interrupted`` and why, and the error is raised again."""
    now = utcnow()
    with Session(engine) as s:
        known = set(purposes.info(s))
    report = Report(import_id=uuid.uuid4().hex)
    actor = lifecycle.Actor(
        ActorType.IMPORT, Channel.IMPORT, name=_actor_name(path), run_id=report.import_id
    )
    report.rows, report.errors = validate(path, known, now)
    if report.errors and not skip_bad:
        return report
    bad = {e.line for e in report.errors}
    committed = False
    try:
        for batch in _batches(path, bad, known, now, batch_size):
            _import_batch(engine, batch, actor, propagate, report)
            committed = True
    except BaseException as exc:
        if committed:
            with contextlib.suppress(Exception):  # the original error matters more
                _record_run(engine, actor, report, propagate, interrupted=type(exc).__name__)
        raise
    _record_run(engine, actor, report, propagate)
    return report


def _actor_name(path: Path) -> str:
    """``import:FILE`` as the audit trail records it: printable, cut to the column's length."""
    name = "".join("?" if unprintable(c) else c for c in f"import:{path.name}")
    return name[: column_length("consent_event", "actor")]


def _batches(
    path: Path, bad: set[int], known: set[str], now: datetime, size: int
) -> Iterator[list[Row]]:
    """The second pass: the good rows, ``size`` at a time."""
    batch: list[Row] = []
    for record in _reader(path):
        if record.line in bad:
            continue
        try:
            batch.append(parse_row(record, known, now))
        except ConsentflowError as exc:
            raise InvalidInput(
                f"{path}:{record.line}: {exc} (the file changed while it was imported)"
            ) from None
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _record_run(
    engine: Engine,
    actor: lifecycle.Actor,
    report: Report,
    propagate: bool,
    interrupted: str | None = None,
) -> None:
    detail: dict[str, Any] = {
        "import_id": report.import_id,
        "rows": report.rows,
        "subjects_created": report.subjects_created,
        "consents_created": report.consents_created,
        "unchanged": report.unchanged,
        "bad_rows": len(report.errors),
        "propagate": propagate,
    }
    if interrupted is not None:
        detail["interrupted"] = interrupted
    with db.session_scope(engine) as s:
        audit.record(
            s,
            "import.run",
            actor_type=actor.type.value,
            actor=actor.name,
            channel=actor.channel.value,
            run_id=report.import_id,
            detail=detail,
        )


def _subject_ids(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    """The ids of those of ``external_ids`` that exist."""
    stmt = select(col(Subject.external_id), col(Subject.id)).where(
        col(Subject.external_id).in_(list(external_ids))
    )
    return {ext: sid for ext, sid in session.exec(stmt).all() if sid is not None}


def _import_batch(
    engine: Engine, rows: list[Row], actor: lifecycle.Actor, propagate: bool, report: Report
) -> None:
    with db.session_scope(engine) as s:
        secret = reference_key(s)
        ids = {r.external_id for r in rows}
        existing = _subject_ids(s, ids)
        first_rows: dict[str, Row] = {}
        for r in rows:
            if r.external_id not in existing:
                first_rows.setdefault(r.external_id, r)
        created: list[dict[str, Any]] = [
            {
                "external_id": r.external_id,
                "subject_ref": subject_ref(secret, r.external_id),
                "email": r.email,
                "locale": r.locale,
                "last_seq": 0,
                "created_at": utcnow(),
            }
            for r in first_rows.values()
        ]
        if created:
            s.execute(insert(metadata.tables["subject"]), created)
            existing.update(_subject_ids(s, first_rows))
        wanted = [
            lifecycle.ImportRow(
                existing[r.external_id], r.purpose, r.state, r.given_at, r.valid_until
            )
            for r in rows
            if r.purpose is not None and r.state is not None
        ]
        created_entries = [
            audit.Entry(
                action="subject.created",
                subject_ref=c["subject_ref"],
                actor_type=actor.type.value,
                actor=actor.name,
                channel=actor.channel.value,
                run_id=actor.run_id,
                detail={"has_email": c["email"] is not None, "locale": c["locale"]},
            )
            for c in created
        ]
        changes = lifecycle.import_consents(
            s, wanted, actor, propagate=propagate, preface=created_entries
        )
    report.subjects_created += len(created)
    report.consents_created += len(changes)
    report.unchanged += len(wanted) - len(changes)

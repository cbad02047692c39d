"""Bulk migration from another consent platform: a CSV of subjects and their consents.

Two passes over the file. The first validates every row and keeps nothing but what duplicate
detection needs, so a file with any bad row can be refused whole, every bad row listed by line.
The second imports in batches, each its own transaction, through the ledger's batch write path:
the same state, history and audit rows as single changes, a few statements per batch. Re-running
the same file changes nothing (subjects and consents already present are left as they are), which
also makes an interrupted import safe to finish by running it again.
"""

from __future__ import annotations

import csv
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
from consentflow.errors import ConsentflowError, InvalidInput
from consentflow.keys import instance_secret, subject_ref
from consentflow.models import ActorType, Channel, State, Subject, metadata, utcnow
from consentflow.subjects import check_email, check_external_id, check_locale
from consentflow.timeutil import parse_instant

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
class Row:
    line: int
    external_id: str
    email: str | None
    locale: str | None
    purpose: str | None
    state: State | None
    given_at: datetime | None
    valid_until: datetime | None


def parse_row(
    line: int, raw: dict[str, str | None], known_purposes: set[str], now: datetime
) -> Row:
    """Validate one CSV row; raises ``InvalidInput`` with what is wrong."""
    if None in raw:
        raise InvalidInput("more fields than the header has")
    v = {k: (raw.get(k) or "").strip() for k in COLUMNS}
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
        line=line,
        external_id=check_external_id(v["external_id"]),
        email=check_email(v["email"]),
        locale=check_locale(v["locale"]),
        purpose=purpose,
        state=state,
        given_at=given_at,
        valid_until=valid_until,
    )


def _reader(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            try:
                header = reader.fieldnames or []
                if "external_id" not in header:
                    raise InvalidInput(
                        f"{path}: the header must name external_id (and {', '.join(COLUMNS[1:])})"
                    )
                unknown = [h for h in header if h not in COLUMNS]
                if unknown:
                    raise InvalidInput(f"{path}: unknown column(s) {', '.join(unknown)}")
                for raw in reader:
                    yield reader.line_num, raw
            except csv.Error as exc:
                raise InvalidInput(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a directory: give a CSV file") from None
    except PermissionError:
        raise InvalidInput(f"cannot read {path}: permission denied") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None


def validate(path: Path, known_purposes: set[str], now: datetime) -> tuple[int, list[RowError]]:
    """First pass: every error by line; conflicting and duplicate rows count as errors."""
    errors: list[RowError] = []
    subjects_seen: dict[str, tuple[int, int]] = {}  # external_id -> (hash of email+locale, line)
    consents_seen: dict[tuple[str, str], int] = {}
    rows = 0
    for line, raw in _reader(path):
        rows += 1
        try:
            row = parse_row(line, raw, known_purposes, now)
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
    """Validate, then import ``path`` in batches. With bad rows and no ``skip_bad``: nothing."""
    now = utcnow()
    with Session(engine) as s:
        known = set(purposes.info(s))
    report = Report(import_id=uuid.uuid4().hex)
    report.rows, report.errors = validate(path, known, now)
    if report.errors and not skip_bad:
        return report
    bad = {e.line for e in report.errors}
    actor = lifecycle.Actor(
        ActorType.IMPORT, Channel.IMPORT, name=f"import:{path.name}", run_id=report.import_id
    )
    batch: list[Row] = []
    for line, raw in _reader(path):
        if line in bad:
            continue
        batch.append(parse_row(line, raw, known, now))
        if len(batch) >= batch_size:
            _import_batch(engine, batch, actor, propagate, report)
            batch = []
    if batch:
        _import_batch(engine, batch, actor, propagate, report)
    with db.session_scope(engine) as s:
        audit.record(
            s,
            "import.run",
            actor_type=actor.type.value,
            actor=actor.name,
            channel=actor.channel.value,
            run_id=report.import_id,
            detail={
                "import_id": report.import_id,
                "rows": report.rows,
                "subjects_created": report.subjects_created,
                "consents_created": report.consents_created,
                "unchanged": report.unchanged,
                "bad_rows": len(report.errors),
                "propagate": propagate,
            },
        )
    return report


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
        secret = instance_secret(s)
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

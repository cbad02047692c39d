"""Bulk migration from another consent platform: a CSV of subjects and their consents.

The file is read and validated once. The first pass parses and checks every record, keeps in
memory nothing but the bad rows, and puts each good row, as it will be written, into a scratch
table on disk (a temporary SQLite file); the rows that conflict with an earlier row (another
email or locale for the same subject, a second consent for the same subject and purpose) are then
found there by SQL. So a file with any bad row is refused whole, every bad row listed by line,
and memory stays flat however long the file is (the scratch file grows with it: ~100 bytes a
row). The second pass reads the scratch rows back and imports them in batches, each its own
transaction, through the ledger's batch write path (``lifecycle.import_consents``, ``write``):
the same state, history and audit rows as single changes, a few many-row statements per batch
(``db.Writer``: ``COPY`` on PostgreSQL). Re-running the same file changes nothing (subjects and
consents already present are left as they are), which also makes an interrupted import safe to
finish by running it again.

Invariants:

- The first pass refuses everything the database would: a control character in any field (NUL
  included: PostgreSQL refuses it), an id breaking the identifier rule
  (``subjects.check_external_id``), a bad address or locale, a value longer than its column
  (each rule reads the limit from the model). So a file that validates imports whole, and
  ``--skip-bad`` imports every other row. Addresses are judged by ``subjects.check_email``; the
  usual plain ASCII address takes a shortcut that gives the same answer (``_Rules.email``).
- A row is named by the physical line its record starts on (1 is the header), also after a
  quoted field holding line breaks; a malformed CSV names the line where parsing failed.
- A file with a bad row and no ``skip_bad`` commits nothing, not even an audit entry. Every run
  that commits leaves one ``import.run`` entry with its counts, even one that stops halfway
  (``interrupted``: why; see ``import_file``).
- New subjects get the reference ``subjects.add`` would give them (``keys.reference_key``; the
  next generation for an id whose earlier registrations were erased).

Failure modes: an unreadable file, a malformed CSV and a scratch file that cannot be written (no
room in the temporary directory) are ``InvalidInput``, one line, before anything is written.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import re
import sqlite3
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy.engine import Engine
from sqlmodel import Session

from consentflow import audit, db, lifecycle, purposes, subjects
from consentflow.actors import column_length, unprintable
from consentflow.errors import ConsentflowError, InvalidInput
from consentflow.keys import reference_key
from consentflow.ledger._batch import create_subjects
from consentflow.models import ActorType, Channel, State, utcnow
from consentflow.timeutil import parse_instant

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
COLUMNS = ("external_id", "email", "locale", "purpose", "state", "given_at", "valid_until")
_STATES = {s.value: s for s in State}


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


#: A good row as the scratch table keeps it: line, external_id, email, locale, purpose, state,
#: given_at, valid_until (instants as ISO 8601 text, UTC).
Row = tuple[int, str, str | None, str | None, str | None, str | None, str | None, str | None]

# --------------------------------------------------------------------------- one row's rules

#: An address email-validator takes as it is but for its domain: an unquoted ASCII local part
#: (RFC 5322 dot-atom, the characters email-validator's own first check accepts) and an ASCII
#: domain. Anything else goes the whole way through ``subjects.check_email``.
_PLAIN_ADDRESS = re.compile(
    r"([A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+)*)@([A-Za-z0-9.-]+)\Z"
)
_MAILBOX_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)  # email-validator lowercases these
_MAX_ADDRESS = 254  # email-validator's limit on the whole address
_MEMO = 10_000  # at most this many domains and locales remembered


class _Rules:
    """The checks of one row (``row``), remembering the judgements that repeat across rows (a
    domain, a locale) so that a million rows do not pay for them a million times."""

    def __init__(self, known_purposes: set[str], now: datetime) -> None:
        self.known, self.now = known_purposes, now
        self.domains: dict[str, str | None] = {}
        self.locales: dict[str, str | None] = {}

    def email(self, value: str) -> str | None:
        """``subjects.check_email(value)``: the same answer, the usual address faster. A plain
        address's local part is stored as given; its domain as email-validator normalises it,
        judged once per domain (``x@DOMAIN``: the domain's rules do not depend on the local
        part); when that form is ASCII the address's length is all that is left to check."""
        found = _PLAIN_ADDRESS.match(value)
        if found is not None and len(value) <= _MAX_ADDRESS:
            local, domain = found.groups()
            if domain not in self.domains:
                try:
                    normal = subjects.check_email("x@" + domain)
                except InvalidInput:
                    normal = None
                stored = normal.partition("@")[2] if normal else None
                if len(self.domains) < _MEMO:
                    self.domains[domain] = stored if stored and stored.isascii() else None
            stored = self.domains.get(domain)
            if stored and local.lower() not in _MAILBOX_NAMES:
                address = f"{local}@{stored}"
                if len(address) <= _MAX_ADDRESS:
                    return address
        return subjects.check_email(value)

    def locale(self, value: str) -> str | None:
        if value in self.locales:
            return self.locales[value]
        checked = subjects.check_locale(value)
        if len(self.locales) < _MEMO:
            self.locales[value] = checked
        return checked

    def row(self, line: int, v: list[str], extra: int) -> Row:
        """Validate one record (``v``: its fields in ``COLUMNS`` order, stripped); raises
        ``InvalidInput`` with what is wrong.

        Every check the database would make is made here first: no field holds a control
        character (PostgreSQL refuses NUL), and each stored value passes its rule, which holds it
        to its column's length (``subjects.check_external_id``, ``check_email``,
        ``check_locale``)."""
        if extra > 0:
            raise InvalidInput("more fields than the header has")
        if unprintable("".join(v)) is not None:
            for name, value in zip(COLUMNS, v, strict=True):
                bad = unprintable(value)
                if bad is not None:
                    raise InvalidInput(f"{name} contains the control character {bad}")
        ext, email, locale, purpose_, state_, given_, until_ = v
        purpose = purpose_ or None
        state = None
        if purpose is not None:
            if purpose not in self.known:
                raise InvalidInput(f"unknown purpose {purpose!r}: add it first with `purpose add`")
            if not state_:
                raise InvalidInput("a row with a purpose needs a state")
            state = _STATES.get(state_)
            if state not in lifecycle.IMPORTABLE_STATES:
                allowed = ", ".join(sorted(lifecycle.IMPORTABLE_STATES))
                raise InvalidInput(f"bad state {state_!r}: use one of {allowed}")
        elif state_ or given_ or until_:
            raise InvalidInput("state, given_at and valid_until need a purpose")
        given_at = parse_instant(given_, "given_at")
        valid_until = parse_instant(until_, "valid_until")
        now = self.now
        if given_at and given_at > now:
            raise InvalidInput(f"given_at {given_!r} is in the future")
        if state is State.EXPIRED and not valid_until:
            raise InvalidInput("an expired consent needs its valid_until (when it ended)")
        if state is State.EXPIRED and valid_until and valid_until > now:
            raise InvalidInput(f"valid_until {until_!r} is in the future: not expired yet")
        if valid_until and state not in (State.GIVEN, State.EXPIRED):
            raise InvalidInput(
                f"valid_until only applies to given or expired consents, not {state}"
            )
        if valid_until and given_at and valid_until <= given_at:
            raise InvalidInput("valid_until must be after given_at")
        if state is not None:
            # One that ended before it arrived here comes in as what it is (effective_state).
            state = lifecycle.effective_state(state, valid_until, now)
        return (
            line,
            subjects.check_external_id(ext),
            self.email(email) if email else None,
            self.locale(locale) if locale else None,
            purpose,
            state.value if state is not None else None,
            given_at.isoformat() if given_at else None,
            valid_until.isoformat() if valid_until else None,
        )


# ----------------------------------------------------------------------------- reading the file


def _records(path: Path, fh: Iterable[str]) -> Iterator[tuple[int, list[str], int]]:
    """Each record after the header: the physical line it starts on (a quoted field may hold
    line breaks; blank lines are skipped), its fields in ``COLUMNS`` order (stripped; "" for a
    column the header or the record lacks) and how many fields it has beyond the header's."""
    reader = csv.reader(fh, strict=True)
    start = 1
    try:
        header = next(reader, [])
        _check_header(path, header)
        where = {name: i for i, name in enumerate(header)}  # the last of a repeated name
        index = [where.get(name, len(header)) for name in COLUMNS]
        width = len(header)
        while True:
            start = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                return
            if not fields:
                continue
            n = len(fields)
            if n < width:
                fields = fields + [""] * (width - n)
            yield start, [fields[i].strip() if i < width else "" for i in index], n - width
    except csv.Error as exc:
        where_ = reader.line_num if reader.line_num > start else start
        opened = f" (the record starts on line {start})" if where_ != start else ""
        raise InvalidInput(f"{path}:{where_}: malformed CSV: {exc}{opened}") from None


def _check_header(path: Path, header: list[str]) -> None:
    if "external_id" not in header:
        raise InvalidInput(
            f"{path}: the header must name external_id (and {', '.join(COLUMNS[1:])})"
        )
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        shown = ", ".join(repr(h) if unprintable(h) else h for h in unknown)
        raise InvalidInput(f"{path}: unknown column(s) {shown}")


def _reader(path: Path) -> Iterator[tuple[int, list[str], int]]:
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


# ------------------------------------------------------------------------- the scratch table

_CONFLICTS = """
WITH s AS (
    SELECT line, ext, purpose,
           first_value(line) OVER w AS first,
           email IS NOT first_value(email) OVER w OR locale IS NOT first_value(locale) OVER w
               AS differs
    FROM row WINDOW w AS (PARTITION BY ext ORDER BY line)
), c AS (
    SELECT line, first_value(line) OVER (PARTITION BY ext, purpose ORDER BY line) AS first
    FROM s WHERE NOT differs AND purpose IS NOT NULL
)
SELECT line, first, 1 FROM s WHERE differs
UNION ALL
SELECT line, first, 0 FROM c WHERE line <> first
"""


class _Scratch:
    """The good rows of the file in a temporary SQLite file: written once by the first pass,
    checked for conflicts between rows by SQL, read back in order by the second. Nothing here
    needs to survive a crash (no journal, no syncing); its page cache is bounded (8 MiB)."""

    def __init__(self, directory: str) -> None:
        self.db = sqlite3.connect(Path(directory) / "rows.db", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE row (line INTEGER PRIMARY KEY, ext TEXT NOT NULL, email TEXT,"
            " locale TEXT, purpose TEXT, state TEXT, given_at TEXT, valid_until TEXT)"
        )
        self.db.execute("BEGIN")

    def add(self, rows: list[Row]) -> None:
        self.db.executemany("INSERT INTO row VALUES (?,?,?,?,?,?,?,?)", rows)

    def conflicts(self) -> list[RowError]:
        """Rows that contradict an earlier good row: another email or locale for the same
        subject; a second consent for the same subject and purpose."""
        errors = []
        for line, first, differs in self.db.execute(_CONFLICTS):
            if differs:
                message = f"email or locale differs from line {first} for the same subject"
            else:
                message = f"second consent for the same subject and purpose (line {first})"
            errors.append(RowError(line, message))
        return errors

    def drop(self, lines: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM row WHERE line = ?", [(n,) for n in lines])

    def batches(self, size: int) -> Iterator[list[Row]]:
        cursor = self.db.execute("SELECT * FROM row ORDER BY line")
        while batch := cursor.fetchmany(size):
            yield batch

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def _scratch() -> Iterator[_Scratch]:
    with tempfile.TemporaryDirectory(prefix="consentflow-import-") as directory:
        scratch = _Scratch(directory)
        try:
            yield scratch
        finally:
            scratch.close()


def _first_pass(
    path: Path, known_purposes: set[str], now: datetime, scratch: _Scratch
) -> tuple[int, list[RowError]]:
    """Every error by line; conflicting and duplicate rows count as errors. The good rows go
    to ``scratch``."""
    rules = _Rules(known_purposes, now)
    errors: list[RowError] = []
    good: list[Row] = []
    rows = 0
    for line, values, extra in _reader(path):
        rows += 1
        try:
            good.append(rules.row(line, values, extra))
        except ConsentflowError as exc:
            errors.append(RowError(line, str(exc)))
        if len(good) >= 5000:
            scratch.add(good)
            good = []
            gc.collect(1)  # see _collector_paused
    scratch.add(good)
    errors += scratch.conflicts()
    errors.sort(key=lambda e: e.line)
    return rows, errors


# ------------------------------------------------------------------------------ the import


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
    one stopped halfway (the database gone): that entry says ``interrupted`` and why, and the
    error is raised again."""
    now = utcnow()
    with Session(engine) as s:
        known = set(purposes.info(s))
    report = Report(import_id=uuid.uuid4().hex)
    actor = lifecycle.Actor(
        ActorType.IMPORT, Channel.IMPORT, name=_actor_name(path), run_id=report.import_id
    )
    with _scratch() as scratch, _collector_paused():
        try:
            report.rows, report.errors = _first_pass(path, known, now, scratch)
        except sqlite3.Error as exc:
            raise InvalidInput(f"cannot validate {path}: the scratch file failed: {exc}") from None
        if report.errors and not skip_bad:
            return report
        scratch.drop(e.line for e in report.errors)
        committed = False
        try:
            for batch in scratch.batches(batch_size):
                _import_batch(engine, batch, actor, propagate, report)
                committed = True
                gc.collect(1)  # what reference counting left of the batch: young objects only
        except BaseException as exc:
            if committed:
                with contextlib.suppress(Exception):  # the original error matters more
                    _record_run(engine, actor, report, propagate, interrupted=type(exc).__name__)
            raise
    _record_run(engine, actor, report, propagate)
    return report


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No automatic garbage collection while the import runs (then as it was). Its millions of
    short-lived rows are freed by reference counting; the collector would walk every object the
    process holds, again and again, for nothing (a fifth of the import's time). Each batch ends
    with a collection of the young generations, so cycles cannot pile up."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _actor_name(path: Path) -> str:
    """``import:FILE`` as the audit trail records it: printable, cut to the column's length."""
    name = "".join("?" if unprintable(c) else c for c in f"import:{path.name}")
    return name[: column_length("consent_event", "actor")]


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


def _import_batch(
    engine: Engine, rows: list[Row], actor: lifecycle.Actor, propagate: bool, report: Report
) -> None:
    """One transaction: the batch's new subjects (``create_subjects``), then every consent row
    through ``lifecycle.import_consents`` (new subjects as ``created``; those already there
    locked and checked for what they hold)."""
    with db.session_scope(engine) as s:
        w = db.Writer(s)
        firsts: dict[str, Row] = {}
        for r in rows:
            firsts.setdefault(r[1], r)
        where, param = w.in_list("external_id", list(firsts))
        ids: dict[str, int] = dict(
            w.fetch(f"SELECT external_id, id FROM subject WHERE {where}", [param])
        )
        new = [(ext, r[2], r[3]) for ext, r in firsts.items() if ext not in ids]
        created, entries = create_subjects(s, new, actor, reference_key(s))
        ids |= {ext: sid for sid, ext, _ in created}
        when = datetime.fromisoformat
        wanted = [
            lifecycle.ImportRow(
                ids[ext],
                purpose,
                _STATES[state],
                when(given_at) if given_at else None,
                when(valid_until) if valid_until else None,
            )
            for _, ext, _, _, purpose, state, given_at, valid_until in rows
            if purpose is not None and state is not None
        ]
        changes = lifecycle.import_consents(
            s, wanted, actor, propagate=propagate, preface=entries, created=created
        )
    report.subjects_created += len(new)
    report.consents_created += len(changes)
    report.unchanged += len(wanted) - len(changes)

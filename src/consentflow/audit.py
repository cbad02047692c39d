"""The tamper-evident audit trail: a single hash chain over every audit entry.

Each entry's hash covers its own fields and the previous entry's hash, so changing, deleting,
inserting or reordering any entry breaks the chain from that point on, and ``verify`` names the
first entry where it breaks. The chain's tip is kept in ``audit_head``; appends lock that one row,
which is what keeps the chain linear when several workers commit at once on PostgreSQL.

Why this stays fast: appends happen in batches (one locked read of the head, one ``executemany``
insert, one head update per transaction), hashing costs microseconds per entry, and the head lock
is taken as the *last* write of a transaction, so it is held only for the instant before commit.
Callers must keep it that way: append audit entries after every other write of the transaction.

The chain proves the database has not been edited behind consentflow's back, except for cutting
entries off the end together with rewriting the head; ``verify`` prints the head so that it can be
anchored outside the database (``--expect SEQ:HASH`` checks such an anchor later).

Format versions. The hashed header (``_FIELDS``) has not changed since the first release; what a
consent entry's ``detail`` carries has. Entries written since format 2 carry ``"v": 2`` and
``"evidence"``: the keyed hash of the event's evidence (``evidence_digest``; None when there was
none), so the evidence is chained without putting an IP address or user agent into the trail.
``append`` adds both to every ``consent.*`` entry that names its ``event_id`` (reading the
evidence of those events, written earlier in the same transaction). Entries of format 1 (no
``v``) verify exactly as before; their evidence was never chained (``integrity`` says which).

Failure modes: a missing ``audit_head`` row (deleted) is reported by ``verify`` as a broken chain,
never raised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import orjson
from sqlmodel import Session, col, select

from consentflow.db import Column, Writer
from consentflow.errors import InvalidInput
from consentflow.keys import derive
from consentflow.models import AuditEntry, AuditHead, utcnow

GENESIS = "0" * 64
#: The format of a consent entry's ``detail`` written now (see the module docstring).
CONSENT_FORMAT = 2
_FIELDS = (
    "seq",
    "recorded_at",
    "action",
    "subject_ref",
    "purpose_key",
    "actor_type",
    "actor",
    "channel",
    "run_id",
    "detail",
)


@dataclass
class Entry:
    """An audit entry before it joins the chain. ``detail`` must be JSON-serialisable."""

    action: str
    subject_ref: str | None = None
    purpose_key: str | None = None
    actor_type: str | None = None
    actor: str | None = None
    channel: str | None = None
    run_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _detail_json(detail: dict[str, Any]) -> bytes:
    # Stored as exactly this text, so the hash covers exactly what the database returns.
    return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS, default=str)


def _digest(prev_hash: str, header: list[Any], detail_json: bytes) -> str:
    return hashlib.sha256(
        b"%s\n%s\n%s" % (prev_hash.encode(), orjson.dumps(header), detail_json)
    ).hexdigest()


def digest(prev_hash: str, row: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 over the previous hash, the entry's fields as a compact
    JSON array (in ``_FIELDS`` order, time as ISO 8601 UTC), and its detail as compact JSON with
    sorted keys, each on its own line."""
    header = [_iso(row[n]) if n == "recorded_at" else row[n] for n in _FIELDS[:-1]]
    return _digest(prev_hash, header, _detail_json(row["detail"]))


_COLUMNS = [
    Column(name, pg_type)
    for name, pg_type in (
        ("seq", "bigint"), ("recorded_at", "timestamptz"), ("action", "text"),
        ("subject_ref", "text"), ("purpose_key", "text"), ("actor_type", "text"),
        ("actor", "text"), ("channel", "text"), ("run_id", "text"), ("detail", "json"),
        ("prev_hash", "text"), ("hash", "text"),
    )
]  # fmt: skip


def evidence_digest(secret: bytes, evidence: Any) -> str | None:
    """The keyed hash of an event's evidence (canonical JSON, sorted keys); None for none.

    Keyed with the reference key (``keys.reference_key``, never rotated; ``keys.derive``, label
    ``"audit-evidence:"``) because evidence is low-entropy personal data (an IP address): a plain
    hash in an exported trail could be reversed by trying every address.
    """
    if evidence is None:
        return None
    canonical = orjson.dumps(evidence, option=orjson.OPT_SORT_KEYS)
    return derive(secret, "audit-evidence:", canonical).hex()


def append(session: Session, entries: Iterable[Entry], *, now: datetime | None = None) -> int:
    """Chain ``entries`` onto the trail in the caller's transaction; returns the new head seq.

    Call it as the last write of the transaction (see the module docstring).
    """
    items = list(entries)
    if not items:
        return 0
    recorded_at = now or utcnow()
    iso = _iso(recorded_at)
    head = session.exec(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    ).one()
    seq, prev = head
    writer = Writer(session)
    stored_at = writer.ts(recorded_at)
    rows = []
    for e in items:
        seq += 1
        detail = _detail_json(e.detail)
        header = [
            seq,
            iso,
            e.action,
            e.subject_ref,
            e.purpose_key,
            e.actor_type,
            e.actor,
            e.channel,
            e.run_id,
        ]
        digest_ = _digest(prev, header, detail)
        rows.append((seq, stored_at, *header[2:], detail.decode(), prev, digest_))
        prev = digest_
    writer.insert("audit_entry", _COLUMNS, rows)
    writer.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
    return seq


def record(session: Session, action: str, **fields: Any) -> int:
    """Append a single entry; a convenience over ``append``."""
    return append(session, [Entry(action=action, **fields)])


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found. ``first_bad`` is the seq of the first entry that fails, if any."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    problem: str | None = None


_VERIFY_COLUMNS: list[Any] = [getattr(AuditEntry, n) for n in (*_FIELDS, "prev_hash", "hash")]


def _row_dict(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in (*_FIELDS, "prev_hash", "hash")}


def verify(
    session: Session, *, expect: tuple[int, str] | None = None, chunk: int = 5000
) -> Verification:
    """Walk the whole chain and report the first entry that does not fit.

    Detects an edited entry (its hash no longer matches), a deleted one (a gap in the sequence, or
    the head pointing past the end), an inserted or reordered one (its ``prev_hash`` does not
    match its predecessor). ``expect`` is an anchor recorded earlier: entry SEQ must still hash
    to HASH.
    """
    found = session.exec(select(AuditHead).where(AuditHead.id == 1)).first()
    head = found or AuditHead(id=1, seq=-1, hash="")
    prev_hash, expected_seq, count = GENESIS, 1, 0

    def bad(seq: int, problem: str) -> Verification:
        return Verification(False, count, head.seq, head.hash, seq, problem)

    last = 0
    while True:
        # Columns, not ORM objects: nothing to track or expunge, a few times faster.
        batch: list[Any] = session.exec(
            select(*_VERIFY_COLUMNS)
            .where(col(AuditEntry.seq) > last)
            .order_by(col(AuditEntry.seq))
            .limit(chunk)
        ).all()
        if not batch:
            break
        for entry in batch:
            row = entry._asdict()
            if entry.seq != expected_seq:
                if entry.seq > expected_seq:
                    return bad(expected_seq, f"entry {expected_seq} is missing (deleted)")
                return bad(entry.seq, f"entry {entry.seq} is out of order")
            if entry.prev_hash != prev_hash:
                return bad(entry.seq, "does not link to the entry before it (inserted or moved)")
            if digest(prev_hash, row) != entry.hash:
                return bad(entry.seq, "its content does not match its hash (modified)")
            if expect and entry.seq == expect[0] and entry.hash != expect[1]:
                return bad(entry.seq, "does not match the anchor recorded earlier")
            prev_hash, expected_seq, count = entry.hash, expected_seq + 1, count + 1
            last = entry.seq
    if found is None:
        return bad(count, "the chain's head row (audit_head) is missing (deleted)")
    if count > head.seq:
        return bad(head.seq + 1, f"is past the chain's head at {head.seq} (inserted)")
    if count < head.seq:
        return bad(count + 1, f"is missing: the chain ends at {count}, its head at {head.seq}")
    if head.hash != prev_hash:
        return bad(count, "does not match the chain's head (modified or replaced)")
    if expect and expect[0] > count:
        return bad(expect[0], "the anchor recorded earlier is past the end of the chain")
    return Verification(True, count, head.seq, head.hash)


def export(
    session: Session,
    out: IO[str],
    *,
    subject_ref: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write entries as JSON Lines (oldest first), each with its hashes so it can be re-checked."""
    n = 0
    for entry in iter_entries(session, subject_ref=subject_ref, since=since, until=until):
        row = _row_dict(entry)
        row["recorded_at"] = _iso(row["recorded_at"])
        out.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
        n += 1
    return n


def iter_entries(
    session: Session,
    *,
    subject_ref: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    chunk: int = 5000,
) -> Iterator[AuditEntry]:
    """Entries matching the filters in chain order, read in chunks so memory stays flat."""
    if since and until and since > until:
        raise InvalidInput("--since is after --until: nothing can match")
    last = 0
    while True:
        stmt = select(AuditEntry).where(col(AuditEntry.seq) > last)
        if subject_ref is not None:
            stmt = stmt.where(AuditEntry.subject_ref == subject_ref)
        if since is not None:
            stmt = stmt.where(col(AuditEntry.recorded_at) >= since)
        if until is not None:
            stmt = stmt.where(col(AuditEntry.recorded_at) < until)
        batch = session.exec(stmt.order_by(col(AuditEntry.seq)).limit(chunk)).all()
        if not batch:
            return
        for entry in batch:
            yield entry
            session.expunge(entry)
        last = batch[-1].seq

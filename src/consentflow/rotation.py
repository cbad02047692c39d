"""Key rotation: a new newest key, every sealed value re-sealed under it, one audit entry.

``rotate`` (``consentflow keys rotate``) in three steps, each its own transaction:

1. **decide**: refused on a record that fails ``audit verify`` (``integrity.require_intact``),
   on a reference key other than the one the last rotation recorded, and on a sealed value no
   listed key opens (nothing changed in any case). A rotation is *pending* when the newest key
   is not the one the last ``keys.rotated`` entry recorded as signing (a key prepended by hand,
   or a run interrupted after writing the key file), or when a sealed value is not under the
   newest key: then this run finishes it, with no new key. Otherwise, with a key file, a new
   key is generated and the file rewritten atomically (new key first, every old key kept, the
   reference key pinned on its ``reference:`` line: ``keys.write_key_file``); with
   ``CONSENTFLOW_SECRET_KEY`` the operator must prepend a new key first (``Conflict``, one line:
   a process cannot change the environment of the others).
2. **re-seal** every sealed value not already under the newest key (``system`` webhook secrets,
   current and previous; ``subject_key.sealed_key``), ``BATCH`` rows per transaction, each row
   locked and written only if unchanged since read. Idempotent: a run interrupted here is
   finished by running it again (step 1 sees it pending).
3. **record** one audit entry ``keys.rotated`` (the key fingerprints, ``keys.fingerprint``: never a
   key), unless the last one already names the newest key (a run finishing after another did).

Concurrent rotations queue on the chain head's row lock (SQLite: the write lock) in step 1, so
at most one generates a key; a second one then finds the first pending and helps it finish.
``status`` (``consentflow keys list``) shows the same facts without changing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, integrity, keys, secretbox
from consentflow.actors import Actor, audit_fields
from consentflow.errors import Conflict
from consentflow.models import AuditEntry, AuditHead, System
from consentflow.views import KeyOut, KeyRotationOut, KeysOut

ACTION = "keys.rotated"
#: Rows re-sealed per transaction.
BATCH = 500


@dataclass(frozen=True)
class _Sealed:
    """One sealed value: its kind (``webhook_secrets``, ``data_keys``), row, column, what to
    call it in a message (no secret, no personal data) and the stored text."""

    kind: str
    row: int
    column: str
    label: str
    value: str


def _systems(session: Session, after: int, lock: bool) -> list[_Sealed]:
    stmt = (
        select(System.id, System.name, System.webhook_secret, System.previous_secret)
        .where(col(System.id) > after)
        .order_by(col(System.id))
        .limit(BATCH)
    )
    out = []
    for row_id, name, current, previous in session.exec(stmt.with_for_update() if lock else stmt):
        for column, value in (("webhook_secret", current), ("previous_secret", previous)):
            label = f"the {column.replace('_', ' ')} of system {name!r}"
            out.append(_Sealed("webhook_secrets", row_id or 0, column, label, value or ""))
    return out


def _data_keys(session: Session, after: int, lock: bool) -> list[_Sealed]:
    if not inspect(session.connection()).has_table("subject_key"):
        return []  # a database from before per-subject data keys
    query = (
        "SELECT subject_id, sealed_key FROM subject_key WHERE subject_id > :after "
        "AND sealed_key IS NOT NULL ORDER BY subject_id LIMIT :n"
    )
    if lock and db.is_postgres(session):
        query += " FOR UPDATE"
    rows = session.execute(text(query), {"after": after, "n": BATCH}).all()
    return [
        _Sealed("data_keys", sid, "sealed_key", f"the data key of subject #{sid}", value)
        for sid, value in rows
    ]


_SOURCES: tuple[Callable[[Session, int, bool], list[_Sealed]], ...] = (_systems, _data_keys)


def _batches(
    session_for: Callable[[], Any], lock: bool = False
) -> Iterator[tuple[Session, list[_Sealed]]]:
    """Every sealed value, ``BATCH`` rows at a time, each batch in a unit of work of its own
    (``session_for()``, a context manager); empty values skipped."""
    for source in _SOURCES:
        after = 0
        while True:
            with session_for() as s:
                found = source(s, after, lock)
                if not found:
                    break
                after = max(v.row for v in found)
                yield s, [v for v in found if v.value]


@dataclass
class _Census:
    """Sealed values under the newest key, under an older one, and the first no key opens
    (values stored in plain text before encryption count in none: re-sealing seals them)."""

    current: int = 0
    older: int = 0
    unreadable: str | None = None


def _census(engine: Engine, box: secretbox.Box) -> _Census:
    census = _Census()
    for _, values in _batches(lambda: db.session_scope(engine, readonly=True)):
        for v in values:
            if box.current(v.value):
                census.current += 1
            elif secretbox.is_sealed(v.value):
                census.older += 1
                try:
                    box.open(v.value)
                except secretbox.SecretUnreadable:
                    census.unreadable = census.unreadable or v.label
    return census


def _last_record(session: Session) -> tuple[dict[str, Any], datetime] | None:
    row = session.exec(
        select(AuditEntry.detail, AuditEntry.recorded_at)
        .where(AuditEntry.action == ACTION)
        .order_by(col(AuditEntry.seq).desc())
        .limit(1)
    ).first()
    return (dict(row[0]), row[1]) if row is not None else None


def _prints(found: keys.Keys) -> tuple[list[str], str]:
    """The fingerprints of the signing keys (newest first) and of the reference key."""
    ref = found.reference
    return [keys.fingerprint(ref, k) for k in found.signing], keys.fingerprint(ref, ref)


def status(engine: Engine) -> KeysOut:
    """What ``consentflow keys list`` shows: fingerprints, which key signs, the sealed values'
    census, whether a rotation is pending. No key, no secret."""
    with db.session_scope(engine, readonly=True) as s:
        found = keys.load(s)
        last = _last_record(s)
    census = _census(engine, secretbox.Box(found.signing))
    prints, reference = _prints(found)
    return KeysOut(
        source="key file" if found.path else "environment",
        key_file=str(found.path) if found.path else None,
        reference=reference,
        reference_pinned=found.pinned,
        keys=[
            KeyOut(fingerprint=p, signs=i == 0, reference=p == reference)
            for i, p in enumerate(prints)
        ],
        sealed_current=census.current,
        sealed_older=census.older,
        unreadable=census.unreadable,
        rotation_pending=_pending(found, last, census),
        last_rotated_at=last[1] if last else None,
    )


def _pending(found: keys.Keys, last: tuple[dict[str, Any], datetime] | None, c: _Census) -> bool:
    """Whether a rotation was begun and not finished (see the module docstring)."""
    if c.older:
        return True
    if len(found.signing) < 2:
        return False
    return last is None or last[0].get("signing") != _prints(found)[0][0]


def rotate(engine: Engine, actor: Actor) -> KeyRotationOut:
    """Rotate (or finish a rotation): see the module docstring. Raises ``Conflict`` (refused,
    nothing changed) or ``InvalidInput`` (a key file that cannot be written)."""
    with db.session_scope(engine, readonly=True) as s:
        integrity.require_intact(s, "rotate keys")
        before = keys.load(s)
    census = _census(engine, secretbox.Box(before.signing))
    if census.unreadable:
        raise Conflict(
            f"refusing to rotate keys: {census.unreadable} opens with no listed key (its key "
            "was removed): put that key back in the list first (docs/keys.md)"
        )
    generated = _decide(engine, census)
    resealed = _reseal(engine)
    with db.session_scope(engine) as s:
        _lock_head(s)
        found = keys.load(s)
        prints, reference = _prints(found)
        last = _last_record(s)
        recorded = last is None or last[0].get("signing") != prints[0]
        if recorded:
            detail = {
                "signing": prints[0],
                "keys": prints,
                "reference": reference,
                "generated": generated,
                "resealed": resealed,
                "source": "key file" if found.path else "environment",
            }
            audit.record(s, ACTION, detail=detail, **audit_fields(actor))
    return KeyRotationOut(
        generated=generated,
        recorded=recorded,
        signing=prints[0],
        keys=prints,
        reference=reference,
        resealed=sum(resealed.values()),
        key_file=str(found.path) if found.path else None,
    )


def _lock_head(session: Session) -> None:
    """Queue behind any other rotation (and audited write): the chain head's row lock."""
    session.exec(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update()).first()


def _decide(engine: Engine, census: _Census) -> bool:
    """Step 1 under the head lock: whether a new key was generated (else the run finishes a
    pending rotation). Refuses what the module docstring says."""
    with db.session_scope(engine) as s:
        _lock_head(s)
        found = keys.load(s)
        last = _last_record(s)
        prints, reference = _prints(found)
        if last is not None and last[0].get("reference") not in (None, reference):
            raise Conflict(
                f"refusing to rotate keys: the reference key (fingerprint {reference}) is not "
                f"the one the last rotation recorded ({last[0]['reference']}): restore "
                "CONSENTFLOW_REFERENCE_KEY or the key file's reference line (docs/keys.md)"
            )
        if _pending(found, last, census):
            return False
        if found.path is None:
            raise Conflict(
                f"the newest key in CONSENTFLOW_SECRET_KEY (fingerprint {prints[0]}) already "
                "signs and seals everything: prepend a new key (e.g. `openssl rand -base64 "
                "32`) on every host, keep the old ones and set CONSENTFLOW_REFERENCE_KEY, "
                "restart, then run `consentflow keys rotate` again (docs/keys.md)"
            )
        fresh = keys.new_key().encode()
        keys.write_key_file(found.path, [fresh, *found.signing], found.reference)
        return True


def _reseal(engine: Engine) -> dict[str, int]:
    """Step 2: every sealed value not under the newest key, re-sealed; counts by kind."""
    counts = {"webhook_secrets": 0, "data_keys": 0}
    box: secretbox.Box | None = None
    for s, values in _batches(lambda: db.session_scope(engine), lock=True):
        box = box or secretbox.Box.of(s)
        for v in values:
            if box.current(v.value):
                continue
            fresh = box.reseal(v.value)
            if v.kind == "webhook_secrets":
                column = getattr(System, v.column)
                stmt = update(System).where(col(System.id) == v.row, column == v.value)
                s.execute(stmt.values({v.column: fresh}))
            else:
                s.execute(
                    text(
                        "UPDATE subject_key SET sealed_key = :fresh "
                        "WHERE subject_id = :row AND sealed_key = :old"
                    ),
                    {"fresh": fresh, "row": v.row, "old": v.value},
                )
            counts[v.kind] += 1
    return counts

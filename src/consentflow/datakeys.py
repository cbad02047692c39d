"""Per-subject data keys: crypto-shredding of what must stay in place about an erased person.

An erasure (``erasure.erase``) cannot delete everything about a person: the outbox still holds
the withdrawals and the ``subject.erased`` webhooks that must reach downstream systems with the
person's real external id, and the delivered ones are the record of who learnt what when. So
each such body is kept encrypted under a key of that person alone, and destroying the key makes
every copy unreadable at once, wherever the rows are (crypto-shredding).

Invariants:

- A data key is a random Fernet key (AES-128-CBC with HMAC-SHA256), stored only sealed by the
  instance keys (``secretbox.seal``; ``consentflow keys rotate`` re-seals ``subject_key`` rows
  with the webhook secrets). It is created at erasure and never leaves this module.
- A sealed value reads ``sealed:v1:<subject id>:<Fernet token>``: a prefix no JSON body can
  start with, so ``is_sealed`` tells sealed from plain without guessing.
- ``destroy`` sets ``sealed_key`` to NULL and ``destroyed_at``; nothing brings a key back.
  ``erasure.shred_settled`` calls it once nothing of the subject's is pending.

Failure modes: opening a value whose key was destroyed (or never existed) raises ``Shredded``,
one line; a key sealed by no listed instance key raises ``secretbox.SecretUnreadable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from consentflow import secretbox
from consentflow.errors import Conflict
from consentflow.models import Delivery, SubjectKey, utcnow

#: What every sealed value starts with.
SEALED = "sealed:v1:"


class Shredded(Conflict):
    """The value belongs to an erased subject whose data key was destroyed: it is gone."""


def is_sealed(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SEALED)


def subject_of(value: str) -> int | None:
    """The subject id a sealed value names (None for a plain value)."""
    if not is_sealed(value):
        return None
    head, _, _token = value[len(SEALED) :].partition(":")
    return int(head) if head.isdigit() else None


def create(session: Session, subject_id: int, *, now: datetime | None = None) -> Fernet:
    """The subject's data key, made now if it has none (``Shredded`` if it was destroyed)."""
    row = session.get(SubjectKey, subject_id)
    if row is None:
        key = Fernet.generate_key().decode("ascii")
        session.add(
            SubjectKey(
                subject_id=subject_id,
                sealed_key=secretbox.seal(session, key),
                created_at=now or utcnow(),
            )
        )
        session.flush()
        return Fernet(key)
    return _open_key(session, row)


def _open_key(session: Session, row: SubjectKey | None) -> Fernet:
    if row is None or row.sealed_key is None:
        raise Shredded(
            "this delivery is about an erased person whose data key was destroyed: its body can "
            "no longer be read or sent (the system was told of the erasure, or gave up on it)"
        )
    return Fernet(secretbox.open_secret(session, row.sealed_key).encode("ascii"))


def seal(key: Fernet, subject_id: int, text: str) -> str:
    """``text`` sealed under the subject's data key (an already sealed value is kept as is)."""
    if is_sealed(text):
        return text
    return f"{SEALED}{subject_id}:{key.encrypt(text.encode('utf-8')).decode('ascii')}"


class Opener:
    """Opens sealed values, each subject's key opened once (a claim's worth of deliveries)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._keys: dict[int, Fernet | Shredded] = {}

    def open(self, value: str) -> str:
        """The plain text of ``value`` (a plain value is returned as is); ``Shredded`` if its
        subject's key was destroyed."""
        subject_id = subject_of(value)
        if subject_id is None:
            if is_sealed(value):
                raise Shredded("a sealed value names no subject: it cannot be opened")
            return value
        if subject_id not in self._keys:
            try:
                self._keys[subject_id] = _open_key(
                    self._session, self._session.get(SubjectKey, subject_id)
                )
            except Shredded as exc:
                self._keys[subject_id] = exc
        key = self._keys[subject_id]
        if isinstance(key, Shredded):
            raise key
        token = value[len(SEALED) :].partition(":")[2]
        try:
            return key.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise Shredded("a sealed value does not open with its subject's data key") from None


def require_readable(session: Session, value: str) -> None:
    """Raise ``Shredded`` if ``value`` is sealed under a destroyed key (e.g. before a replay)."""
    Opener(session).open(value)


def destroy(session: Session, subject_ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Destroy the data keys of ``subject_ids`` (those not destroyed yet); returns how many."""
    ids = sorted(set(subject_ids))
    if not ids:
        return 0
    result = session.execute(
        update(SubjectKey)
        .where(col(SubjectKey.subject_id).in_(ids), col(SubjectKey.sealed_key).is_not(None))
        .values(sealed_key=None, destroyed_at=now or utcnow())
    )
    count: int = getattr(result, "rowcount", 0)
    return count


def shredded(session: Session, delivery_ids: Iterable[int]) -> set[int]:
    """Those of ``delivery_ids`` whose body was sealed under a key since destroyed: they can
    never be sent again (a bulk replay leaves them out)."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return set()
    head = func.substr(col(Delivery.payload), 1, len(SEALED) + 24)
    owners = {
        did: subject_of(text)
        for did, text in session.exec(
            select(Delivery.id, head).where(
                col(Delivery.id).in_(ids), col(Delivery.payload).startswith(SEALED)
            )
        ).all()
    }
    subjects = {sid for sid in owners.values() if sid is not None}
    alive = set(
        session.exec(
            select(SubjectKey.subject_id).where(
                col(SubjectKey.subject_id).in_(subjects), col(SubjectKey.sealed_key).is_not(None)
            )
        ).all()
    )
    return {did for did, sid in owners.items() if did is not None and sid not in alive}

"""The instance secret, and the one function every keyed value is derived with.

Invariants:

- ``derive`` (HMAC-SHA256 over the concatenated parts) is the only keyed hash in the ledger:
  subject references (``subject_ref``), the suppression list's address hashes (``mail``), the
  email links' per-action keys and signatures (``links``), the web app's per-purpose keys and the
  Fernet key that seals webhook secrets at rest (``secretbox``, via ``hkdf``). Each use starts
  its parts with its own label (``"subject:"``, ``"email:"``, ``"consentflow-link:<action>"``,
  ...), so no two uses can produce the same input.
- Stored and handed-out values never change: ``tests/ledger/test_keys.py`` pins them for a fixed
  secret. Changing a label, the order of parts or the truncation breaks every stored reference.
- Unkeyed digests are not derivations and stay where they are used: the audit chain
  (``audit``), API token hashes (``tokens``: tokens are random and high-entropy) and the Standard
  Webhooks signature, whose construction the receivers' libraries fix (``delivery.signing``).

This module needs no ``consentflow.db`` (the insert below is the same SQL on SQLite and
PostgreSQL), so ``db.upgrade`` may generate the secret without an import cycle.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import bindparam, text
from sqlmodel import Session, select

from consentflow.models import InstanceKey, metadata, utcnow
from consentflow.settings import get_settings


def instance_secret(session: Session) -> bytes:
    """``CONSENTFLOW_SECRET_KEY`` if set, else a random key generated once and kept in the database.

    Generating it on first use means a fresh install needs no configuration, and keeping it in the
    database means pseudonyms stay stable across processes. Two processes generating it at once
    both read the one that won (``ON CONFLICT DO NOTHING``: SQLite and PostgreSQL alike).
    """
    configured = get_settings().secret_key
    if configured:
        return configured.encode()
    row = session.exec(select(InstanceKey)).first()
    if row is None:
        created_at = metadata.tables["instance_key"].c.created_at
        session.execute(
            text(
                "INSERT INTO instance_key (id, secret, created_at) VALUES (1, :secret, :created_at)"
                " ON CONFLICT (id) DO NOTHING"
            ).bindparams(bindparam("created_at", type_=created_at.type)),
            {"secret": secrets.token_urlsafe(32), "created_at": utcnow()},
        )
        row = session.exec(select(InstanceKey)).one()
    return row.secret.encode()


def derive(key: bytes, *parts: str | bytes) -> bytes:
    """HMAC-SHA256 of ``parts`` (text as UTF-8, concatenated) under ``key``: the one keyed hash.

    Used for derived keys (``derive(secret, "consentflow-link:grant")``), keyed hashes
    (``derive(secret, "subject:", external_id)``) and signatures (``derive(link_key, body)``).
    """
    message = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(key, message, hashlib.sha256).digest()


def hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt, 32 bytes: two ``derive`` steps.

    Extract: ``PRK = HMAC(zero salt, secret)``; expand, one block: ``HMAC(PRK, info || 0x01)``.
    Byte-identical to ``cryptography``'s ``HKDF(SHA256(), length=32, salt=None, info=info)``.
    """
    prk = derive(bytes(hashlib.sha256().digest_size), secret)
    return derive(prk, info, b"\x01")


def subject_ref(secret: bytes, external_id: str) -> str:
    """A keyed hash of the subject's external id: stable, unlinkable without the key."""
    return derive(secret, "subject:", external_id).hex()[:32]

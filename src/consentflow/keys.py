"""The instance secret and the pseudonymous subject references derived from it."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from consentflow.db import is_postgres
from consentflow.models import InstanceKey
from consentflow.settings import get_settings


def instance_secret(session: Session) -> bytes:
    """``CONSENTFLOW_SECRET_KEY`` if set, else a random key generated once and kept in the database.

    Generating it on first use means a fresh install needs no configuration, and keeping it in the
    database means pseudonyms stay stable across processes.
    """
    configured = get_settings().secret_key
    if configured:
        return configured.encode()
    row = session.exec(select(InstanceKey)).first()
    if row is None:
        insert = postgresql.insert if is_postgres(session) else sqlite.insert
        stmt = insert(InstanceKey).values(id=1, secret=secrets.token_urlsafe(32))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
        row = session.exec(select(InstanceKey)).one()
    return row.secret.encode()


def subject_ref(secret: bytes, external_id: str) -> str:
    """A keyed hash of the subject's external id: stable, unlinkable without the key."""
    return hmac.new(secret, b"subject:" + external_id.encode(), hashlib.sha256).hexdigest()[:32]

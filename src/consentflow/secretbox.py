"""Webhook secrets at rest: encrypted with a key derived from the instance secret.

``System.webhook_secret`` and ``System.previous_secret`` hold ``enc:v1:`` followed by a Fernet
token (AES-128-CBC with HMAC-SHA256, from ``cryptography``) of the ``whsec_...`` secret. The
Fernet key is derived with HKDF-SHA256 (``keys.hkdf``) from ``keys.instance_secret``:
``CONSENTFLOW_SECRET_KEY`` when it is set, else the key generated once and kept in the database.
So a database dump alone does not reveal the secrets only when ``CONSENTFLOW_SECRET_KEY`` is set
(and kept outside the database); changing that key makes the stored secrets unreadable (rotate
them afterwards).

A value without the prefix is read as plain text (nothing stored that way was released; it keeps
old test databases readable). The plain secret leaves this module only to sign a request and,
once, to be shown to the operator who created or rotated it.

This is a ledger-level module (``systems`` seals a secret at registration, ``delivery`` opens it
to sign); ``consentflow.delivery.secretbox`` re-exports it for older imports.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from sqlmodel import Session

from consentflow import keys
from consentflow.errors import ConsentflowError

PREFIX = "enc:v1:"
_INFO = b"consentflow webhook secrets v1"


class SecretUnreadable(ConsentflowError):
    """A stored webhook secret cannot be decrypted with the current instance secret."""


def _fernet(instance_secret: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(keys.hkdf(instance_secret, _INFO)))


class Box:
    """Seal and open secrets with one instance secret (one key derivation for many values)."""

    def __init__(self, instance_secret: bytes) -> None:
        self._fernet = _fernet(instance_secret)

    @classmethod
    def of(cls, session: Session) -> Box:
        return cls(keys.instance_secret(session))

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored  # written before encryption: plain text
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadable(
                "the stored webhook secret cannot be decrypted: CONSENTFLOW_SECRET_KEY (or the "
                "generated instance key) changed since it was stored; rotate the secret "
                "(consentflow system rotate-secret) and give the receiver the new one"
            ) from None


def is_sealed(stored: str | None) -> bool:
    return bool(stored) and str(stored).startswith(PREFIX)


def seal(session: Session, secret: str) -> str:
    """The stored form of ``secret``."""
    return Box.of(session).seal(secret)


def open_secret(session: Session, stored: str) -> str:
    """The plain secret from its stored form (raises ``SecretUnreadable``)."""
    return Box.of(session).open(stored)

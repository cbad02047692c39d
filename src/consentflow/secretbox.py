"""Secrets at rest (webhook secrets, per-subject data keys): sealed with the newest instance key,
opened with any.

``System.webhook_secret``, ``System.previous_secret`` and ``subject_key.sealed_key`` hold
``enc:v1:`` followed by a Fernet token (AES-128-CBC with HMAC-SHA256, from ``cryptography``) of
the secret. Each instance key (``keys.signing_keys``, newest first) gives one Fernet key, derived
with HKDF-SHA256 (``keys.hkdf``); a ``MultiFernet`` of them seals with the newest and opens
with any, so adding a key breaks nothing, and ``consentflow keys rotate`` re-seals every value
under the newest key (``Box.reseal``, only where ``Box.current`` says it is not already) before
an old key may be retired (docs/keys.md). The keys live outside the database, so a dump alone
reveals no secret.

A value without the prefix is read as plain text (nothing stored that way was released; it keeps
old test databases readable; a rotation seals it). The plain secret leaves this module only to
sign a request, to open a subject's data, and once, to be shown to the operator who created or
rotated it.

Failure mode: a value sealed by no listed key (its key was retired, or the key list replaced)
raises ``SecretUnreadable``, one line saying how to recover, never the value.

This is a ledger-level module (``systems`` seals a secret at registration, ``delivery`` opens it
to sign); ``consentflow.delivery.secretbox`` re-exports it for older imports.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlmodel import Session

from consentflow import keys
from consentflow.errors import ConsentflowError

PREFIX = "enc:v1:"
_INFO = b"consentflow webhook secrets v1"


class SecretUnreadable(ConsentflowError):
    """A stored secret cannot be decrypted with any of the instance keys."""


def _fernet(key: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(keys.hkdf(key, _INFO)))


class Box:
    """Seal with the newest of ``signing_keys`` and open with any (one key derivation each for
    many values). A single key (``bytes``) is a list of one."""

    def __init__(self, signing_keys: Sequence[bytes] | bytes) -> None:
        listed = [signing_keys] if isinstance(signing_keys, bytes) else list(signing_keys)
        if not listed:
            raise ValueError("a Box needs at least one key")
        self._newest = _fernet(listed[0])
        self._any = MultiFernet([self._newest, *(_fernet(k) for k in listed[1:])])

    @classmethod
    def of(cls, session: Session) -> Box:
        return cls(keys.signing_keys(session))

    def seal(self, secret: str) -> str:
        return PREFIX + self._any.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored  # written before encryption: plain text
        try:
            return self._any.decrypt(_token(stored)).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadable(
                "a stored secret cannot be decrypted with any of the instance keys: the key "
                "that sealed it was removed from CONSENTFLOW_SECRET_KEY (or the key file); put "
                "it back (docs/keys.md), or for a webhook secret rotate it (consentflow system "
                "rotate-secret) and give the receiver the new one"
            ) from None

    def current(self, stored: str) -> bool:
        """Whether ``stored`` is sealed under the newest key (so a rotation leaves it alone)."""
        if not is_sealed(stored):
            return False
        try:
            self._newest.decrypt(_token(stored))
        except (InvalidToken, ValueError):
            return False
        return True

    def reseal(self, stored: str) -> str:
        """``stored`` sealed under the newest key (raises ``SecretUnreadable``)."""
        return self.seal(self.open(stored))


def _token(stored: str) -> bytes:
    return stored[len(PREFIX) :].encode("ascii")


def is_sealed(stored: str | None) -> bool:
    return bool(stored) and str(stored).startswith(PREFIX)


def seal(session: Session, secret: str) -> str:
    """The stored form of ``secret``."""
    return Box.of(session).seal(secret)


def open_secret(session: Session, stored: str) -> str:
    """The plain secret from its stored form (raises ``SecretUnreadable``)."""
    return Box.of(session).open(stored)

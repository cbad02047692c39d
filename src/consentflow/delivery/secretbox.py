"""Moved to ``consentflow.secretbox`` (the ledger seals secrets at registration); re-exported."""

from consentflow.secretbox import PREFIX, Box, SecretUnreadable, is_sealed, open_secret, seal

__all__ = ["PREFIX", "Box", "SecretUnreadable", "is_sealed", "open_secret", "seal"]

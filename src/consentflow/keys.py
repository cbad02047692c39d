"""The instance secret, where it lives, and the one function every keyed value is derived with.

Invariants:

- ``derive`` (HMAC-SHA256 over the concatenated parts) is the only keyed hash in the ledger:
  subject references (``subject_ref``), the suppression list's address hashes (``mail``), the
  email links' per-action keys and signatures (``links``), the web app's per-purpose keys and the
  Fernet key that seals webhook secrets at rest (``secretbox``, via ``hkdf``), the audit chain's
  hash of an event's evidence (``audit.evidence_digest``, ``"audit-evidence:"``). Each use starts
  its parts with its own label (``"subject:"``, ``"email:"``, ``"consentflow-link:<action>"``,
  ...), so no two uses can produce the same input.
- Stored and handed-out values never change: ``tests/ledger/test_keys.py`` pins them for a fixed
  secret. Changing a label, the order of parts or the truncation breaks every stored reference.
- The secret is never stored in the database, so a dump alone forges nothing. It is
  ``CONSENTFLOW_SECRET_KEY`` when set (required in production mode: ``settings``), else the text
  of the key file (``key_file_path``: ``CONSENTFLOW_KEY_FILE``, or beside a SQLite database,
  or in ``CONSENTFLOW_DATA_DIR`` for PostgreSQL), which ``db.upgrade`` generates with mode 0600.
  The file's text (stripped) is the key's bytes, exactly as the database kept it before, so a
  key moved out of an older database (``adopt_legacy_secret``, called by migration 0002) keeps
  every link and reference valid.
- Unkeyed digests are not derivations and stay where they are used: the audit chain
  (``audit``), API token and session hashes (``tokens``: both are random and high-entropy) and
  the Standard Webhooks signature, whose construction the receivers' libraries fix
  (``delivery.signing``).

Failure modes, each one ``InvalidInput`` line naming the file, never a silent new key:

- a missing key file is generated only while the database holds nothing keyed yet (no
  subject, no sealed webhook secret, no suppressed address) and no key of an older version
  (table ``instance_key``): a database restored without its key file, or a second host
  missing it, is refused instead of being given a key of its own that would break every link
  and pseudonym;
- a key file readable by group or others, empty, or unreadable is refused;
- two processes generating at once both end with the winner's key (the file appears atomically,
  by ``link``).

This module needs no ``consentflow.db``, so ``db.upgrade`` and the migrations may call it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, make_url
from sqlmodel import Session

from consentflow.errors import InvalidInput
from consentflow.settings import get_settings

#: Rows made with the instance secret (pseudonyms, sealed webhook secrets, address hashes): while
#: any exists, a missing key file means the key is lost (or elsewhere), never that a new one may
#: be made.
KEYED_ROWS = {
    "subject": "SELECT 1 FROM subject LIMIT 1",
    "system": 'SELECT 1 FROM "system" WHERE webhook_secret IS NOT NULL LIMIT 1',
    "email_suppression": "SELECT 1 FROM email_suppression LIMIT 1",
}
_MIN_KEY = 16
_cache: dict[tuple[str, int, int, int], bytes] = {}


def data_dir() -> Path:
    """``CONSENTFLOW_DATA_DIR``, else ``$XDG_DATA_HOME/consentflow`` or ``~/.local/share/...``."""
    configured = get_settings().data_dir
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "consentflow"


def key_file_path(url: URL | str) -> Path:
    """The key file of the database at ``url`` (``CONSENTFLOW_KEY_FILE`` when set)."""
    configured = get_settings().key_file
    if configured:
        return Path(configured).expanduser()
    parsed = make_url(url) if isinstance(url, str) else url
    name = parsed.database or ""
    backend = parsed.get_backend_name()
    if backend == "sqlite" and name and name != ":memory:" and not name.startswith("file:"):
        path = Path(name).expanduser().absolute()
        return path.with_name(path.name + ".key")
    label = f"{parsed.get_backend_name()}-{parsed.host or 'local'}-{parsed.port or 'default'}"
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{label}-{name or 'memory'}")
    return data_dir() / f"{label}.key"


def instance_secret(session: Session) -> bytes:
    """``CONSENTFLOW_SECRET_KEY`` if set, else the key file of the session's database.

    A missing file is generated (see the module's failure modes), so a fresh install needs no
    configuration; ``db.upgrade`` generates it up front.
    """
    configured = get_settings().secret_key
    if configured:
        return configured.encode()
    path = key_file_path(session.get_bind().engine.url)
    key = _read(path)
    if key is None:
        _refuse_new_key_if_keyed(session, path)
        _create(path, secrets.token_urlsafe(32))
        key = _read(path)
        assert key is not None
    return key


def adopt_legacy_secret(url: URL | str, secret: str) -> Path | None:
    """Move a key an older version kept in the database (``instance_key``) into the key file,
    once, so every link and reference made with it stays valid. Returns the file written or
    found, or None when ``CONSENTFLOW_SECRET_KEY`` is set (then the stored key was never used).

    Refuses when the key file exists and holds another key: the operator must choose.
    """
    if get_settings().secret_key:
        return None
    path = key_file_path(url)
    existing = _read(path)
    if existing is None:
        _create(path, secret)
    elif existing != secret.encode():
        raise InvalidInput(
            f"the key file {path} holds a different key from the one this database kept: "
            "move that file away (or set CONSENTFLOW_KEY_FILE) and run `consentflow db upgrade` "
            "again"
        )
    return path


def _refuse_new_key_if_keyed(session: Session, path: Path) -> None:
    conn = session.connection()
    tables = set(inspect(conn).get_table_names())
    if "instance_key" in tables:
        raise InvalidInput(
            "this database still keeps its key inside (an older consentflow): run "
            "`consentflow db upgrade` to move it to a key file"
        )
    for table, query in KEYED_ROWS.items():
        if table in tables and conn.execute(text(query)).first():
            raise InvalidInput(
                f"no key file at {path}, but this database holds data made with a key: restore "
                "the key file (or set CONSENTFLOW_KEY_FILE / CONSENTFLOW_SECRET_KEY); a new key "
                "would break every link and pseudonym"
            )


def _read(path: Path) -> bytes | None:
    """The key in ``path``, or None if there is no such file (checked, cached per version)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot read the key file {path}: {exc.strerror}") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise InvalidInput(
            f"the key file {path} is readable by others (mode {st.st_mode & 0o777:04o}): "
            f"run chmod 600 {path}"
        )
    cache_key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if cache_key in _cache:
        return _cache[cache_key]
    try:
        key = path.read_text(encoding="utf-8").strip().encode()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the key file {path}: {exc}") from None
    if len(key) < _MIN_KEY:
        raise InvalidInput(f"the key file {path} is empty or damaged: restore it from a backup")
    _cache[cache_key] = key
    return key


def _create(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` with mode 0600, atomically; a file already there wins."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secret + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: its key is the key
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create the key file {path}: {exc.strerror}: set CONSENTFLOW_KEY_FILE to a "
            "writable place, or CONSENTFLOW_SECRET_KEY"
        ) from None


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

"""The instance keys, where they live, and the one function every keyed value is derived with.

Two roles (docs/keys.md is the operator's runbook):

- the **signing keys**, newest first (``signing_keys``): the newest signs the email links, CSRF
  tokens and result values and seals webhook secrets and data keys at rest (``secretbox``);
  every key listed still verifies and opens, so a rotation (``consentflow keys rotate``) breaks
  no live link and no sealed value;
- the **reference key** (``reference_key``): the key of every stored keyed value that is looked
  up again later: subject references (``subject_ref``), the suppression list's address hashes
  (``mail.address_hash``) and the audit chain's evidence hashes (``audit.evidence_digest``). It
  never rotates: a new one would orphan every pseudonym and suppressed address. It is pinned
  explicitly as soon as there is more than one key (``CONSENTFLOW_REFERENCE_KEY``, or the key
  file's ``reference:`` line): several keys without it are refused, so retiring the oldest key
  can never change it silently. One key alone is both roles (as before keys could rotate).

Invariants:

- ``derive`` (HMAC-SHA256 over the concatenated parts) is the only keyed hash in the ledger:
  subject references, address hashes, the links' per-action keys and signatures (``links``),
  the web app's per-purpose keys, the Fernet keys that seal secrets at rest (``secretbox``, via
  ``hkdf``), the audit chain's evidence hash (``"audit-evidence:"``) and the key fingerprints
  (``fingerprint``). Each use starts its parts with its own label (``"subject:"``, ``"email:"``,
  ``"consentflow-link:<action>"``, ...), so no two uses can produce the same input.
- Stored and handed-out values never change: ``tests/ledger/test_keys.py`` pins them for a fixed
  key. Changing a label, the order of parts or the truncation breaks every stored reference.
- No key is ever stored in the database, logged or printed: only ``fingerprint``s are shown.
  The keys are ``CONSENTFLOW_SECRET_KEY`` when set (a comma-separated list, newest first:
  ``settings.split_keys``; required in production mode), else the key file (``key_file_path``:
  ``CONSENTFLOW_KEY_FILE``, or beside a SQLite database, or in ``CONSENTFLOW_DATA_DIR`` for
  PostgreSQL), which ``db.upgrade`` generates with mode 0600.
- The key file's formats: one line is one key, exactly as before rotation (the line's bytes are
  the key, also when moved out of an older database by ``adopt_legacy_secret``); otherwise one
  key per line, newest first, ``#`` comments and blank lines ignored, and one line
  ``reference: KEY`` pinning the reference key (required once there are several keys).
  ``write_key_file`` writes that form atomically (mode 0600); a rotation never drops a key.
- Unkeyed digests are not derivations and stay where they are used: the audit chain
  (``audit``), API token and session hashes (``tokens``: both are random and high-entropy) and
  the Standard Webhooks signature, whose construction the receivers' libraries fix
  (``delivery.signing``).

Failure modes, each one ``InvalidInput`` line naming the file, never a silent new key and never
a key in the message:

- a missing key file is generated only while the database holds nothing keyed yet (no
  subject, no sealed webhook secret, no suppressed address) and no key of an older version
  (table ``instance_key``): a database restored without its key file, or a second host
  missing it, is refused instead of being given a key of its own that would break every link
  and pseudonym;
- a key file readable by group or others, empty, unreadable, with a short key, a key listed
  twice, several keys and no ``reference:`` line, is refused;
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
from dataclasses import dataclass
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
#: The key file's line that pins the reference key.
REFERENCE_LINE = "reference:"
_cache: dict[tuple[str, int, int, int], Keys] = {}


@dataclass(frozen=True)
class Keys:
    """The instance's keys: ``signing`` newest first (never empty), the ``reference`` key,
    whether it was pinned explicitly (``CONSENTFLOW_REFERENCE_KEY`` or a ``reference:`` line)
    rather than being the one key there is, and the key file they came from (None: the
    environment)."""

    signing: tuple[bytes, ...]
    reference: bytes
    pinned: bool
    path: Path | None = None

    def __repr__(self) -> str:  # never a key in a log line or a traceback
        where = self.path or "CONSENTFLOW_SECRET_KEY"
        return f"Keys({len(self.signing)} signing keys from {where})"


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


def load(session: Session) -> Keys:
    """The keys: ``CONSENTFLOW_SECRET_KEY`` (and ``CONSENTFLOW_REFERENCE_KEY``) if set, else the
    key file of the session's database.

    A missing file is generated (see the module's failure modes), so a fresh install needs no
    configuration; ``db.upgrade`` generates it up front.
    """
    cfg = get_settings()
    listed = cfg.secret_keys
    if listed:
        signing = tuple(k.encode() for k in listed)
        if cfg.reference_key is not None:
            return Keys(signing, cfg.reference_key.get_secret_value().encode(), True)
        return Keys(signing, signing[0], False)  # one key (settings refuses several without)
    path = key_file_path(session.get_bind().engine.url)
    found = _read(path)
    if found is None:
        _refuse_new_key_if_keyed(session, path)
        _create(path, secrets.token_urlsafe(32))
        found = _read(path)
        assert found is not None
    return found


def reference_key(session: Session) -> bytes:
    """The key of stored keyed values (subject references, address hashes, evidence hashes):
    never rotated."""
    return load(session).reference


def signing_keys(session: Session) -> list[bytes]:
    """The keys that sign and seal, newest first: the newest signs, every one verifies."""
    return list(load(session).signing)


def instance_secret(session: Session) -> bytes:
    """The reference key, under its name from before keys could rotate (one key was both).

    Kept for callers that derive stored values (subject references, evidence hashes); links,
    web tokens and sealing use ``signing_keys``, whose newest key differs after a rotation.
    """
    return reference_key(session)


def fingerprint(reference: bytes, key: bytes) -> str:
    """A short name for ``key`` that reveals nothing of it: 16 hex digits of a hash keyed with
    the reference key (so a weak key cannot be guessed from a fingerprint in an exported audit
    trail), stable across rotations because the reference key never rotates."""
    return derive(reference, "key-fingerprint:", key).hex()[:16]


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe base64 (43 characters, no comma, no space)."""
    return secrets.token_urlsafe(32)


def write_key_file(path: Path, signing: list[bytes], reference: bytes) -> None:
    """Replace the key file at ``path`` with ``signing`` (newest first) and the pinned
    ``reference`` key, atomically (a temporary file of mode 0600, fsynced, renamed over it):
    a reader sees the old file or the new one, never half of one."""
    lines = [
        "# consentflow instance keys (docs/keys.md). Newest first: the newest signs and seals,",
        "# every key listed verifies and opens. The reference key never rotates.",
        f"{REFERENCE_LINE} {reference.decode()}",
        *(k.decode() for k in signing),
    ]
    try:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise InvalidInput(f"cannot write the key file {path}: {exc.strerror}") from None
    found = _read(path)
    if found is None or list(found.signing) != signing or found.reference != reference:
        raise InvalidInput(f"the key file {path} did not read back as written: check the disk")


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
    elif existing.reference != secret.encode():
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


def _read(path: Path) -> Keys | None:
    """The keys in ``path``, or None if there is no such file (checked, cached per version)."""
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
        content = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the key file {path}: {exc}") from None
    found = _parse(path, content)
    _cache[cache_key] = found
    return found


def _parse(path: Path, content: str) -> Keys:
    """The key file's text (stripped) as keys: one line is one key, exactly as before rotation;
    else the several-key form (see the module docstring)."""
    if "\n" not in content and not content.startswith(REFERENCE_LINE):
        if len(content) < _MIN_KEY:
            raise InvalidInput(f"the key file {path} is empty or damaged: restore it from a backup")
        key = content.encode()
        return Keys((key,), key, False, path)
    signing: list[bytes] = []
    references: list[bytes] = []
    for number, raw in enumerate(content.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        is_reference = line.startswith(REFERENCE_LINE)
        text_key = line.removeprefix(REFERENCE_LINE).strip() if is_reference else line
        if len(text_key) < _MIN_KEY or any(c.isspace() for c in text_key):
            raise InvalidInput(
                f"line {number} of the key file {path} is not a key ({_MIN_KEY} or more "
                "characters, no spaces): restore the file from a backup"
            )
        if not is_reference and text_key.encode() in signing:
            raise InvalidInput(f"line {number} of the key file {path} repeats a key: remove it")
        (references if is_reference else signing).append(text_key.encode())
    if not signing or len(references) > 1:
        raise InvalidInput(
            f"the key file {path} holds {len(signing)} keys and {len(references)} reference "
            "lines: it needs one key or more, newest first, and at most one reference line"
        )
    if references:
        return Keys(tuple(signing), references[0], True, path)
    if len(signing) > 1:
        raise InvalidInput(
            f"the key file {path} lists {len(signing)} keys but no `{REFERENCE_LINE}` line: add "
            f"`{REFERENCE_LINE} KEY` naming the key your subject references were made with (the "
            "one key it held before rotating): see docs/keys.md"
        )
    return Keys(tuple(signing), signing[0], False, path)


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

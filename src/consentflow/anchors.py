"""Witnessed audit: the audit chain's head, signed, kept outside the database.

The chain (``audit``) catches any edit except a rewrite of the whole chain, hashes recomputed
from the edit to the head. An **anchor** closes that gap: the head (``seq`` and its ``hash``) and
the instant it was read, signed with Ed25519, copied to places the database's owner does not
control (every webhook's ``consentflow-audit-anchor`` header, so each downstream system keeps
its own; the ``audit-anchor`` flow's file, fsspec URL or email). ``verify_against`` later checks
that every anchor still names an entry of the chain with that hash: a chain rewritten after the
anchor was taken no longer reaches it.

Invariants:

- The signing key is derived, never stored: the Ed25519 seed is ``keys.derive(key,
  "audit-anchor:")`` (32 bytes) of the newest signing key; each anchor names its public key by
  ``kid`` (the first 16 hex digits of SHA-256 over the raw public key). Verification accepts
  only the public keys derived from the instance's key list, so an anchor signed with any other
  key, or whose ``seq``, ``hash`` or ``at`` was edited after signing, is refused. Old anchors
  verify while their key stays in the list (key rotation: ``docs/anchors.md``).
- What is signed: ``consentflow-audit-anchor/1`` then ``seq``, ``hash`` and ``at`` (exactly as
  serialised), each on its own line. The serialisation (``Anchor.compact``) is one JSON object
  without spaces: ``{"v":1,"seq":..,"hash":..,"at":..,"kid":..,"sig":..}``, the same text in the
  header and on each line of an anchors file (JSON Lines). A stored line may carry more fields
  (a receiver's ``received_at``, say); they are not signed and are ignored.
- Anchors name no person and hold no secret: a sequence number, a hash, an instant, a key id.

Failure modes: a malformed line of an anchors file is ``InvalidInput`` naming the line number
(``load``); a forged or mismatching anchor is a finding line naming its ``seq``, never an
exception. ``sign_head`` raises ``Conflict`` when the head row is missing or does not match its
entry (run ``consentflow audit verify``): a broken chain is not anchored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlmodel import Session, col, select

from consentflow import keys
from consentflow.audit import GENESIS
from consentflow.errors import Conflict, InvalidInput
from consentflow.models import AuditEntry, AuditHead, utcnow
from consentflow.timeutil import iso_seconds

#: The webhook header that carries an anchor (beside the Standard Webhooks headers).
HEADER = "consentflow-audit-anchor"
#: The ``keys.derive`` label of the Ed25519 seed.
LABEL = "audit-anchor:"
VERSION = 1
_CONTEXT = b"consentflow-audit-anchor/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KID = re.compile(r"^[0-9a-f]{16}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
#: Anchors looked up per query.
_CHUNK = 500


@dataclass(frozen=True)
class Anchor:
    """A signed chain head. ``line`` is where it was read from (a file), if anywhere."""

    seq: int
    hash: str
    at: str
    kid: str
    sig: str
    line: int | None = None

    def compact(self) -> str:
        """The one-line JSON form (a header value, a line of an anchors file)."""
        fields = {"v": VERSION, "seq": self.seq, "hash": self.hash, "at": self.at}
        fields |= {"kid": self.kid, "sig": self.sig}
        return json.dumps(fields, separators=(",", ":"))

    def where(self) -> str:
        """How a finding names it: its line (if read from a file) and the entry it anchors."""
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}anchor at entry {self.seq}"


def _message(seq: int, digest: str, at: str) -> bytes:
    return b"\n".join((_CONTEXT, str(seq).encode(), digest.encode(), at.encode()))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _private(key: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(keys.derive(key, LABEL))


def key_id(public: Ed25519PublicKey) -> str:
    """The ``kid`` of a public key: SHA-256 over its 32 raw bytes, 16 hex digits."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _key_list(session: Session) -> list[bytes]:
    """The instance's signing keys, newest first (``keys.signing_keys``)."""
    return keys.signing_keys(session)


def public_keys(session: Session) -> dict[str, Ed25519PublicKey]:
    """kid -> public key, for every key in the instance's key list."""
    found: dict[str, Ed25519PublicKey] = {}
    for key in _key_list(session):
        public = _private(key).public_key()
        found.setdefault(key_id(public), public)
    return found


def sign(key: bytes, seq: int, digest: str, at: datetime) -> Anchor:
    """An anchor of entry ``seq`` with hash ``digest`` at ``at``, signed with ``key``'s Ed25519
    key (``key``: an instance signing key, not the seed)."""
    private = _private(key)
    when = iso_seconds(at)
    signature = private.sign(_message(seq, digest, when))
    return Anchor(seq, digest, when, key_id(private.public_key()), _b64(signature))


def sign_head(session: Session, *, now: datetime | None = None) -> Anchor:
    """The chain's head now, signed with the newest key. Reads two rows; takes no lock.

    Refuses (``Conflict``) a head row that is missing or does not match its entry.
    """
    head = session.exec(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).first()
    if head is None:
        raise Conflict(
            "refusing to anchor: the chain's head row is missing; run `consentflow audit verify`"
        )
    seq, digest = head
    if seq > 0:
        stored = session.exec(select(AuditEntry.hash).where(AuditEntry.seq == seq)).first()
        if stored != digest:
            raise Conflict(
                f"refusing to anchor: the chain's head does not match entry {seq}; run "
                "`consentflow audit verify`"
            )
    elif digest != GENESIS:
        raise Conflict("refusing to anchor: the empty chain's head is not the genesis hash")
    return sign(_key_list(session)[0], seq, digest, now or utcnow())


def header_value(session: Session) -> str:
    """The ``consentflow-audit-anchor`` header: the head, signed now, compact."""
    return sign_head(session).compact()


# -------------------------------------------------------------------------------------- reading


def parse(text: str, line: int | None = None) -> Anchor:
    """One anchor from its compact JSON form; ``InvalidInput`` saying what is wrong."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise InvalidInput("not JSON: expected one anchor object per line") from None
    if not isinstance(data, dict):
        raise InvalidInput("not a JSON object: expected one anchor object per line")
    missing = [n for n in ("v", "seq", "hash", "at", "kid", "sig") if n not in data]
    if missing:
        raise InvalidInput(f"not an anchor: no {', '.join(missing)}")
    seq, digest, at, kid, sig = (data[n] for n in ("seq", "hash", "at", "kid", "sig"))
    if data["v"] != VERSION:
        raise InvalidInput(f"unknown anchor version {str(data['v'])[:20]!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidInput("seq: expected a whole number >= 0")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise InvalidInput("hash: expected 64 lowercase hex digits")
    if not isinstance(at, str) or not _instant(at):
        raise InvalidInput("at: expected an ISO 8601 UTC instant")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise InvalidInput("kid: expected 16 lowercase hex digits")
    if not isinstance(sig, str) or _signature(sig) is None:
        raise InvalidInput("sig: expected an Ed25519 signature (base64url, 64 bytes)")
    return Anchor(seq, digest, at, kid, sig, line)


def _instant(text: str) -> bool:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return False
    return value.utcoffset() is not None


def _signature(text: str) -> bytes | None:
    if not _B64URL.match(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def load(lines: Iterable[str], source: str = "anchors") -> list[Anchor]:
    """Every anchor of a JSON Lines text (blank lines skipped); a malformed line is one
    ``InvalidInput`` naming ``source`` and the line number."""
    found = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            found.append(parse(text, number))
        except InvalidInput as exc:
            raise InvalidInput(f"{source} line {number}: {exc}") from None
    return found


# ---------------------------------------------------------------------------------- verifying


def verify_against(session: Session, anchors: Sequence[Anchor]) -> list[str]:
    """One finding per anchor that fails, [] when all hold.

    An anchor holds when its ``kid`` names a key of the instance's key list, its signature
    verifies, and the chain's entry ``seq`` exists with exactly that hash (``seq`` 0: the
    genesis hash). Each finding names the anchor's ``seq`` (and its line).
    """
    publics = public_keys(session)
    findings: list[str] = []
    signed: list[Anchor] = []
    for anchor in anchors:
        problem = _signature_problem(anchor, publics)
        if problem:
            findings.append(f"{anchor.where()}: {problem}")
        else:
            signed.append(anchor)
    hashes = _hashes(session, {a.seq for a in signed if a.seq > 0})
    for anchor in signed:
        stored = GENESIS if anchor.seq == 0 else hashes.get(anchor.seq)
        if stored is None:
            findings.append(
                f"{anchor.where()}: the chain has no entry {anchor.seq} (entries were cut off "
                "the end, or the anchor is from another database)"
            )
        elif stored != anchor.hash:
            findings.append(
                f"{anchor.where()}: entry {anchor.seq} no longer has the hash anchored at "
                f"{anchor.at} (the chain was rewritten after it)"
            )
    return findings


def _signature_problem(anchor: Anchor, publics: dict[str, Ed25519PublicKey]) -> str | None:
    public = publics.get(anchor.kid)
    if public is None:
        return (
            f"signed by key {anchor.kid}, which is not derived from any key in this "
            "instance's key list (forged, or its key was removed from the list)"
        )
    signature = _signature(anchor.sig) or b""
    try:
        public.verify(signature, _message(anchor.seq, anchor.hash, anchor.at))
    except InvalidSignature:
        return "its signature does not verify (forged, or seq, hash or at edited)"
    return None


def _hashes(session: Session, seqs: set[int]) -> dict[int, str]:
    ordered = sorted(seqs)
    found: dict[int, str] = {}
    for i in range(0, len(ordered), _CHUNK):
        part = ordered[i : i + _CHUNK]
        rows = session.exec(
            select(AuditEntry.seq, AuditEntry.hash).where(col(AuditEntry.seq).in_(part))
        ).all()
        found.update({seq: digest for seq, digest in rows})
    return found

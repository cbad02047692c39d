"""An audited export's bookkeeping: what was handed out, and its one audit entry.

Every export that lets personal data leave (the transfer gate's ``transfers.Export``, the
workspace's ``reports.cohorts.Export``) is a subclass: it says its audit ``action``, reads and
writes its rows (``chunks``), calls ``handed`` with the subjects of each chunk once the consumer
has taken it, and says what else its entry holds (``detail``, ``purpose_key``).

Invariants: ``count`` and ``sha256`` (SHA-256 of the handed-out subjects' ids, one a line, as
``sha256sum`` reads them) cover exactly what was handed out; ``finish`` appends the entry once
(the second call returns the same seq), with who, the count, the hash, the format, when it
started and whether it completed, never a person's data. Failure modes: ``finish`` raises what
the audit append raises (the caller logs it: the rows have gone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.engine import Engine

from consentflow import audit, db
from consentflow.actors import Actor, audit_fields
from consentflow.models import utcnow
from consentflow.timeutil import iso_z


@dataclass(kw_only=True)
class AuditedExport:
    """The part every audited export shares (module docstring)."""

    action: ClassVar[str]
    actor: Actor
    format: str = "jsonl"
    engine: Engine | None = None
    count: int = 0
    complete: bool = False
    audit_seq: int | None = None
    started_at: datetime = field(default_factory=utcnow)
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def chunks(self) -> Generator[bytes]:
        """The export's body, a chunk at a time (the CSV header first, for CSV)."""
        raise NotImplementedError

    def detail(self) -> dict[str, Any]:
        """What the audit entry holds besides the bookkeeping (which list, which system)."""
        raise NotImplementedError

    @property
    def purpose_key(self) -> str | None:
        return None

    def handed(self, subjects: Sequence[str]) -> None:
        """Count a chunk's subjects as handed out (after the consumer took it)."""
        if subjects:
            self.count += len(subjects)
            self._hash.update(("\n".join(subjects) + "\n").encode())

    @property
    def sha256(self) -> str:
        return str(self._hash.hexdigest())

    def finish(self) -> int:
        """Append the export's audit entry (once); its seq."""
        if self.audit_seq is None:
            detail = {
                **self.detail(),
                "count": self.count,
                "sha256": self.sha256,
                "complete": self.complete,
                "format": self.format,
                "started_at": iso_z(self.started_at),
            }
            with db.session_scope(self.engine) as session:
                self.audit_seq = audit.record(
                    session,
                    self.action,
                    purpose_key=self.purpose_key,
                    detail=detail,
                    **audit_fields(self.actor),
                )
        return self.audit_seq

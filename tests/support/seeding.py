"""Seeding and counting helpers shared by the sweep and flow tests.

(The session's one Prefect harness is the ``prefect_harness`` fixture in ``support/prefect.py``.)
"""

from __future__ import annotations

import csv
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from consentflow import audit, db, importer, lifecycle, models, subjects
from consentflow.lifecycle import Actor, ImportRow
from consentflow.models import ActorType, AuditEntry, Channel, Consent, ConsentRequest, State

# ------------------------------------------------------------------------------------------
# Seeding and counting helpers shared by the sweep and flow tests
# ------------------------------------------------------------------------------------------


def seed_subjects(
    engine: Engine, n: int, *, prefix: str = "p", email: bool = True, locale: str = "en"
) -> list[int]:
    """``n`` subjects ``{prefix}{i}`` with addresses ``{prefix}{i}@example.com``; their ids."""
    with db.session_scope(engine) as s:
        ids = []
        for i in range(n):
            address = f"{prefix}{i}@example.com" if email else None
            ids.append(subjects.add(s, f"{prefix}{i}", email=address, locale=locale).id)
        return ids


def import_subjects(
    engine: Engine,
    n: int,
    *,
    prefix: str = "p",
    email: bool = True,
    locale: str | None = "en",
    consent: tuple[str, State] | None = None,
    propagate: bool = False,
) -> list[int]:
    """``seed_subjects`` for hundreds of subjects: the same subjects (and ``subject.created``
    entries, by the import actor) registered through the bulk importer in one batch, each
    with a consent ``(purpose, state)`` if given (``propagate``: webhooks for it, as an
    import with ``--propagate``). Their ids, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subjects.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(importer.COLUMNS)
            purpose, state = (consent[0], consent[1].value) if consent else ("", "")
            for i in range(n):
                address = f"{prefix}{i}@example.com" if email else ""
                out.writerow([f"{prefix}{i}", address, locale or "", purpose, state, "", ""])
        report = importer.import_file(engine, path, propagate=propagate, batch_size=n)
    assert not report.errors and report.subjects_created == n, report
    with db.session_scope(engine) as s:
        found = dict(
            s.exec(
                select(models.Subject.external_id, models.Subject.id).where(
                    col(models.Subject.external_id).startswith(prefix)
                )
            ).all()
        )
    return [found[f"{prefix}{i}"] for i in range(n)]


def give(
    engine: Engine,
    subject_ids: list[int],
    purpose: str,
    valid_until: datetime | list[datetime],
    *,
    given_at: datetime | None = None,
) -> None:
    """Given consents with chosen validity ends (through the ledger's import path)."""
    ends = valid_until if isinstance(valid_until, list) else [valid_until] * len(subject_ids)
    with db.session_scope(engine) as s:
        lifecycle.import_consents(
            s,
            [
                ImportRow(sid, purpose, State.GIVEN, given_at or end - timedelta(days=300), end)
                for sid, end in zip(subject_ids, ends, strict=True)
            ],
            Actor(ActorType.IMPORT, Channel.IMPORT, name="test"),
        )


def count(engine: Engine, model: Any, *where: Any) -> int:
    with db.session_scope(engine) as s:
        return s.exec(select(func.count()).select_from(model).where(*where)).one()


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per table, and every consent's and request's mutable columns (for dry-run checks)."""
    with db.session_scope(engine) as s:
        counts: dict[str, Any] = {
            t.name: s.exec(select(func.count()).select_from(t)).one()
            for t in models.metadata.sorted_tables
        }
        counts["consents"] = sorted(
            tuple(r) for r in s.exec(select(Consent.id, Consent.state, Consent.reminder_stage))
        )
        counts["requests"] = sorted(
            tuple(r)
            for r in s.exec(
                select(ConsentRequest.id, ConsentRequest.status, ConsentRequest.followups_sent)
            )
        )
    return counts


def audit_entries(engine: Engine, action: str | None = None) -> list[AuditEntry]:
    with db.session_scope(engine) as s:
        stmt = select(AuditEntry).order_by(col(AuditEntry.seq))
        if action:
            stmt = stmt.where(AuditEntry.action == action)
        return list(s.exec(stmt).all())


def verify_audit(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        result = audit.verify(s)
    assert result.ok, result.problem

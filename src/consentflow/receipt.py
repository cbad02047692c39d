"""A subject's consent receipt in the shape of an ISO/IEC TS 27560:2023 consent record.

The field names follow the standard's information structure (record metadata; one processing block
per purpose with its notice, data categories, lawful basis, recipients and withdrawal method; one
event per change with its time, state, validity, who expressed it and how it was collected), with
the DPV ConsentStatus vocabulary for states. The receipt carries the full record; it is built from
the history, so it shows every notice version the subject actually saw.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from consentflow import lifecycle, purposes, subjects
from consentflow.errors import NotFound
from consentflow.models import Purpose, PurposeVersion, System, SystemPurpose, utcnow

SCHEMA_VERSION = "ISO/IEC TS 27560:2023"
#: A namespace for record ids, so one subject's record id is the same on every receipt.
_NAMESPACE = uuid.UUID("1b1d9a1e-6f0c-5a7e-9d43-27560c0a5e11")
_EXPRESSED_BY = {"subject": "data-subject", "agent": "delegated-agent", "import": "import"}


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


def build(session: Session, external_id: str) -> dict[str, Any]:
    """The receipt for one subject; ``NotFound`` if there is no such subject."""
    subject = subjects.get(session, external_id)
    if subject is None:
        raise NotFound(f"unknown subject {external_id!r}")
    events = lifecycle.history(session, external_id)
    current = {v.purpose: v for v in lifecycle.current(session, external_id)}
    keys = sorted({k for k, _ in events})
    infos = purposes.info(session, keys) if keys else {}
    notices: dict[tuple[str, int], PurposeVersion] = {}
    if keys:
        for key, version in session.exec(
            select(Purpose.key, PurposeVersion)
            .join(PurposeVersion, col(PurposeVersion.purpose_id) == Purpose.id)
            .where(col(Purpose.key).in_(keys))
        ).all():
            notices[(key, version.version)] = version
    recipients: dict[str, list[str]] = {}
    if keys:
        for key, name in session.exec(
            select(Purpose.key, System.name)
            .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
            .join(System, col(System.id) == SystemPurpose.system_id)
            .where(col(Purpose.key).in_(keys))
            .order_by(col(System.name))
        ).all():
            recipients.setdefault(key, []).append(name)

    def notice(key: str, version: int) -> dict[str, Any]:
        v = notices[(key, version)]
        return {
            "notice_id": f"{key}:v{version}",
            "version": version,
            "title": v.title,
            "description": v.description,
            "published_at": _iso(v.created_at),
            "material_change": v.material,
        }

    processing = []
    for key in keys:
        now_view = current.get(key)
        latest = notices[(key, infos[key].current_version)]
        shown = notices[(key, now_view.purpose_version)] if now_view else latest
        processing.append(
            {
                "purposes": [{"purpose": key, "title": shown.title}],
                "privacy_notice": notice(key, shown.version),
                "language": subject.locale,
                "lawful_basis": shown.lawful_basis,
                "pii_categories": list(shown.data_categories),
                "third_party_recipients": recipients.get(key, []),
                "validity_duration": f"P{shown.validity_days}D",
                "withdrawal_method": "the link in any consent email (one click), the preference "
                "page reached from it, or a request to support",
                "consent_type": "expressed",
                "state": now_view.state.value if now_view else None,
                "given_at": _iso(now_view.given_at) if now_view else None,
                "valid_until": _iso(now_view.valid_until) if now_view else None,
                "events": [
                    {
                        "event_id": str(e.id),
                        "sequence": e.seq,
                        "event_time": _iso(e.occurred_at),
                        "recorded_at": _iso(e.recorded_at),
                        "event_type": e.action,
                        "event_state": e.state,
                        "previous_state": e.previous_state,
                        "notice_id": f"{key}:v{e.purpose_version}",
                        "validity_until": _iso(e.valid_until),
                        "event_by": _EXPRESSED_BY.get(e.actor_type, e.actor_type),
                        "agent": e.actor if e.actor_type == "agent" else None,
                        "collection_method": e.channel,
                        "reason": e.reason,
                    }
                    for k, e in events
                    if k == key
                ],
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": str(uuid.uuid5(_NAMESPACE, subject.subject_ref)),
        "receipt_id": str(uuid.uuid4()),
        "receipt_issued_at": _iso(utcnow()),
        "pii_principal_id": subject.external_id,
        "pii_principal_ref": subject.subject_ref,
        "language": subject.locale,
        "record_created_at": _iso(subject.created_at),
        "processing": processing,
    }

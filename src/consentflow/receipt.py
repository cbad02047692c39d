"""A subject's consent receipt in the shape of an ISO/IEC TS 27560:2023 consent record.

The field names follow the standard's information structure (record metadata; one processing block
per purpose with its notice, data categories, lawful basis, recipients and withdrawal method; one
event per change with its time, state, validity, who expressed it and how it was collected), with
the DPV ConsentStatus vocabulary for states. The receipt carries the full record; it is built from
the history, so it shows every notice version the subject actually saw.

Contents: ``schema_version``, a ``record_id`` stable per subject (UUIDv5 of the subject
ref), a fresh ``receipt_id`` per call, ``receipt_issued_at``, the subject's id, ref, language
(``language``: the subject's locale as recorded, English when none is) and creation time,
``pii_controllers`` (the controller configured in ``CONSENTFLOW_CONTROLLER_*``, see
``settings.Controller``), and ``processing``: one block per purpose the subject ever had a
change on, holding the same ``pii_controllers``, the notice the subject's current state was given
under (or the latest notice if there is no current state), the lawful basis, data categories, the
systems that receive the purpose, the validity, the current state and every event of that purpose
in history order.

It is read-only and has no web dependency, so the API and the CLI (``consentflow consent receipt``)
build the same document. Failure mode: ``NotFound`` for an unknown subject; nothing else is
raised for a consistent database. Times are ISO 8601 UTC with a ``Z`` suffix.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from sqlmodel import Session, col, select

from consentflow import lifecycle, purposes, subjects
from consentflow.models import (
    ConsentEvent,
    Purpose,
    PurposeVersion,
    System,
    SystemPurpose,
    utcnow,
)
from consentflow.settings import Controller, get_settings
from consentflow.timeutil import iso_z

SCHEMA_VERSION = "ISO/IEC TS 27560:2023"
#: A namespace for record ids, so one subject's record id is the same on every receipt.
_NAMESPACE = uuid.UUID("1b1d9a1e-6f0c-5a7e-9d43-27560c0a5e11")
#: The receipt's language when the subject has none recorded.
DEFAULT_LANGUAGE = "en"
_EXPRESSED_BY = {"subject": "data-subject", "agent": "delegated-agent", "import": "import"}


def language(locale: str | None) -> str:
    """The receipt's language: the subject's locale as recorded, or ``DEFAULT_LANGUAGE``."""
    return locale.strip() if locale and locale.strip() else DEFAULT_LANGUAGE


def controller_party(controller: Controller) -> dict[str, Any]:
    """The controller as an ISO/IEC TS 27560 party (id, name, address, contact, type), with its
    privacy notice and data protection officer; unset fields are null."""
    return {
        "party_id": controller.privacy_url or controller.name,
        "name": controller.name,
        "address": controller.address,
        "contact": controller.contact,
        "type": "dpv:DataController",
        "privacy_notice_url": controller.privacy_url,
        "data_protection_officer": {"contact": controller.dpo} if controller.dpo else None,
    }


def _notices(session: Session, keys: list[str]) -> dict[tuple[str, int], PurposeVersion]:
    """Every notice version of the given purposes, by (purpose key, version)."""
    notices: dict[tuple[str, int], PurposeVersion] = {}
    for key, version in session.exec(
        select(Purpose.key, PurposeVersion)
        .join(PurposeVersion, col(PurposeVersion.purpose_id) == Purpose.id)
        .where(col(Purpose.key).in_(keys))
    ).all():
        notices[(key, version.version)] = version
    return notices


def _recipients(session: Session, keys: list[str]) -> dict[str, list[str]]:
    """The names of the systems receiving each purpose, by name."""
    recipients: dict[str, list[str]] = {}
    for key, name in session.exec(
        select(Purpose.key, System.name)
        .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .where(col(Purpose.key).in_(keys))
        .order_by(col(System.name))
    ).all():
        recipients.setdefault(key, []).append(name)
    return recipients


def _notice(v: PurposeVersion, key: str) -> dict[str, Any]:
    return {
        "notice_id": f"{key}:v{v.version}",
        "version": v.version,
        "title": v.title,
        "description": v.description,
        "published_at": iso_z(v.created_at),
        "material_change": v.material,
    }


def _event(key: str, e: ConsentEvent) -> dict[str, Any]:
    return {
        "event_id": str(e.id),
        "sequence": e.seq,
        "event_time": iso_z(e.occurred_at),
        "recorded_at": iso_z(e.recorded_at),
        "event_type": e.action,
        "event_state": e.state,
        "previous_state": e.previous_state,
        "notice_id": f"{key}:v{e.purpose_version}",
        "validity_until": iso_z(e.valid_until),
        "event_by": _EXPRESSED_BY.get(e.actor_type, e.actor_type),
        "agent": e.actor if e.actor_type == "agent" else None,
        "collection_method": e.channel,
        "reason": e.reason,
    }


def _processing(
    key: str,
    locale: str,
    now_view: lifecycle.ConsentView | None,
    shown: PurposeVersion,
    recipients: list[str],
    events: list[dict[str, Any]],
    controllers: list[dict[str, Any]],
) -> dict[str, Any]:
    """One processing block: the notice shown, the current state and the purpose's events."""
    return {
        "purposes": [{"purpose": key, "title": shown.title}],
        "pii_controllers": controllers,
        "privacy_notice": _notice(shown, key),
        "language": locale,
        "lawful_basis": shown.lawful_basis,
        "pii_categories": list(shown.data_categories),
        "third_party_recipients": recipients,
        "validity_duration": f"P{shown.validity_days}D",
        "withdrawal_method": "the link in any consent email (one click), the preference "
        "page reached from it, or a request to support",
        "consent_type": "expressed",
        "state": now_view.state.value if now_view else None,  # effective at issue, see build
        "given_at": iso_z(now_view.given_at) if now_view else None,
        "valid_until": iso_z(now_view.valid_until) if now_view else None,
        "events": events,
    }


def build(session: Session, external_id: str) -> dict[str, Any]:
    """The receipt for one subject; ``NotFound`` if there is no such subject."""
    subject = subjects.require(session, external_id)
    issued_at = utcnow()
    events = lifecycle.history(session, external_id)
    # The current state as the access check sees it when the receipt is issued: a given consent
    # past its validity end reads as expired (``lifecycle.effective_state``), sweep or no sweep.
    current = {
        v.purpose: replace(v, state=lifecycle.effective_state(v.state, v.valid_until, issued_at))
        for v in lifecycle.current(session, external_id)
    }
    keys = sorted({k for k, _ in events})
    infos = purposes.info(session, keys) if keys else {}
    notices = _notices(session, keys) if keys else {}
    recipients = _recipients(session, keys) if keys else {}
    controllers = [controller_party(get_settings().controller)]
    lang = language(subject.locale)
    processing = []
    for key in keys:
        now_view = current.get(key)
        latest = notices[(key, infos[key].current_version)]
        shown = notices[(key, now_view.purpose_version)] if now_view else latest
        processing.append(
            _processing(
                key,
                lang,
                now_view,
                shown,
                recipients.get(key, []),
                [_event(key, e) for k, e in events if k == key],
                controllers,
            )
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": str(uuid.uuid5(_NAMESPACE, subject.subject_ref)),
        "receipt_id": str(uuid.uuid4()),
        "receipt_issued_at": iso_z(issued_at),
        "pii_principal_id": subject.external_id,
        "pii_principal_ref": subject.subject_ref,
        "language": lang,
        "record_created_at": iso_z(subject.created_at),
        "pii_controllers": controllers,
        "processing": processing,
    }

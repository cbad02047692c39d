"""Subjects: the people whose consent is recorded.

``require`` is the one way to look a subject up when it must exist: it raises ``NotFound`` with
the one message every door shows, ``unknown subject 'ext-id'`` (mapped to exit 2 by the CLI, to
404 by the API).

An email address goes through ``check_email``, which is ``addresses.check``: the one address rule
(one bare address, validated and normalised by ``email-validator``; internationalised addresses
accepted). Every way in uses it: ``add`` (the CLI's ``subject add --email`` and
``POST /api/v1/subjects``) and the CSV import (``importer``). A refused address raises
``InvalidInput`` before anything is written.
"""

from __future__ import annotations

import re

from sqlmodel import Session, select

from consentflow import addresses, audit
from consentflow.actors import Actor, audit_fields
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.keys import instance_secret, subject_ref
from consentflow.models import Subject

_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def check_external_id(external_id: str) -> str:
    external_id = external_id.strip()
    if not external_id or len(external_id) > 200:
        raise InvalidInput("the external id must be 1 to 200 characters")
    return external_id


def check_email(email: str | None) -> str | None:
    """The stored form of an optional address (``addresses.check``); ``InvalidInput`` if bad."""
    return addresses.check(email)


def check_locale(locale: str | None) -> str:
    if locale is None or locale == "":
        return "en"
    if not _LOCALE.match(locale):
        raise InvalidInput(f"bad locale {locale!r}: use a language tag such as en or fr-CA")
    return locale


def add(
    session: Session,
    external_id: str,
    *,
    email: str | None = None,
    locale: str | None = None,
    actor: Actor | None = None,
) -> Subject:
    """Register a subject. Only what reminders need is stored: an optional email and a locale.

    ``actor`` (who registered it) is recorded in the audit entry."""
    external_id = check_external_id(external_id)
    email, locale = check_email(email), check_locale(locale)
    if session.exec(select(Subject.id).where(Subject.external_id == external_id)).first():
        raise Conflict(f"subject {external_id!r} exists already")
    subject = Subject(
        external_id=external_id,
        subject_ref=subject_ref(instance_secret(session), external_id),
        email=email,
        locale=locale,
    )
    session.add(subject)
    session.flush()
    audit.record(
        session,
        "subject.created",
        subject_ref=subject.subject_ref,
        detail={"has_email": email is not None, "locale": locale},
        **audit_fields(actor),
    )
    return subject


def get(session: Session, external_id: str) -> Subject | None:
    return session.exec(select(Subject).where(Subject.external_id == external_id)).first()


def unknown(external_id: str) -> NotFound:
    """The one error for a subject that does not exist (for lookups that lock or join)."""
    return NotFound(f"unknown subject {external_id!r}")


def require(session: Session, external_id: str) -> Subject:
    """The subject, or ``NotFound("unknown subject 'ext-id'")``: the one message for every door."""
    found = get(session, external_id)
    if found is None:
        raise unknown(external_id)
    return found

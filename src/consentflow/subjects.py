"""Subjects: the people whose consent is recorded.

``require`` is the one way to look a subject up when it must exist: it raises ``NotFound`` with
the one message every door shows, ``unknown subject 'ext-id'`` (mapped to exit 2 by the CLI, to
404 by the API).

An email address goes through ``check_email``, which is ``addresses.check``: the one address rule
(one bare address, validated and normalised by ``email-validator``; internationalised addresses
accepted). Every way in uses it: ``add`` (the CLI's ``subject add --email`` and
``POST /api/v1/subjects``) and the CSV import (``importer``). A refused address raises
``InvalidInput`` before anything is written.

A locale goes through ``check_locale``: none given is stored as None (pages then follow the
browser's ``Accept-Language``, emails and the receipt use English); a malformed tag is refused;
a well-formed one is kept even without a catalog (it falls back to English when rendered).
"""

from __future__ import annotations

from sqlmodel import Session, select

from consentflow import addresses, audit, i18n
from consentflow.actors import Actor, audit_fields
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.keys import instance_secret, subject_ref
from consentflow.models import Subject

#: The longest language tag stored (RFC 5646 section 4.4.1 asks to support at least 35).
MAX_LOCALE = 35


def check_external_id(external_id: str) -> str:
    external_id = external_id.strip()
    if not external_id or len(external_id) > 200:
        raise InvalidInput("the external id must be 1 to 200 characters")
    return external_id


def check_email(email: str | None) -> str | None:
    """The stored form of an optional address (``addresses.check``); ``InvalidInput`` if bad."""
    return addresses.check(email)


def check_locale(locale: str | None) -> str | None:
    """The stored form of an optional language tag: None (or blank) stays None, so the person's
    browser decides (``i18n.negotiate``); a tag is kept as given, trimmed.

    Only a malformed tag is refused (``InvalidInput``, one line): not BCP 47-like
    (``i18n.normalise_tag``: 2-3 letters, then subtags of 1-8 letters or digits) or longer than
    ``MAX_LOCALE`` characters. A well-formed tag of a language without a catalog (``xx``,
    ``pt-BR``) is accepted and falls back to English when a page or email is rendered."""
    if locale is None or not locale.strip():
        return None
    locale = locale.strip()
    if len(locale) > MAX_LOCALE or i18n.normalise_tag(locale) is None:
        raise InvalidInput(f"bad locale {locale[:40]!r}: use a language tag such as en or fr-CA")
    return locale


def add(
    session: Session,
    external_id: str,
    *,
    email: str | None = None,
    locale: str | None = None,
    actor: Actor | None = None,
) -> Subject:
    """Register a subject. Only what reminders need is stored: an optional email and an
    optional locale (``check_locale``; None: the browser's language decides).

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

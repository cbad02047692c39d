"""Subjects: the people whose consent is recorded.

``require`` is the one way to look a subject up when it must exist: it raises ``NotFound`` with
the one message every door shows, ``unknown subject 'ext-id'`` (mapped to exit 2 by the CLI, to
404 by the API).

An email address goes through ``check_email``, which is ``addresses.check``: the one address rule
(one bare address, validated and normalised by ``email-validator``; internationalised addresses
accepted). Every way in uses it: ``add`` (the CLI's ``subject add --email`` and
``POST /api/v1/subjects``) and the CSV import (``importer``). A refused address raises
``InvalidInput`` before anything is written.

An external id (your own identifier for the person) goes through ``check_external_id``, the one
identifier rule for every way in (``add``: the CLI's ``subject add`` and ``POST /api/v1/subjects``;
the CSV import; the API's ``{subject}`` path and ``subject`` query parameters take
``EXTERNAL_ID_PATTERN``): 1 to ``MAX_EXTERNAL_ID`` (the column's length, 200) of the characters
``A-Z a-z 0-9 . _ : + -``, starting with a letter or a digit. So an id is always one URL path
segment (no ``/``, no ``.``/``..``), never holds control characters, and is never an email
address (no ``@``): ids appear in URLs, error messages and webhook bodies, where an address
must not. A refused id raises ``InvalidInput`` naming the first character refused (never
echoing the id). Subjects stored before this rule keep their id; only new ones must follow it.

A locale goes through ``check_locale``: none given is stored as None (pages then follow the
browser's ``Accept-Language``, emails and the receipt use English); a malformed tag is refused;
a well-formed one is kept even without a catalog (it falls back to English when rendered).

A person erased (``erasure``) and registered again with the same external id is a new subject:
a new row whose ``generation`` counts the registrations, with a reference of its own
(``reference``: derived from ``<id>#<generation>`` after the first; ``#`` is outside the
identifier rule, so no other id derives it). The erased row keeps its reference and history,
the pseudonymous proof; both stay findable from the external id by whoever holds the reference
key, and nothing links the new row to the old one but that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlmodel import Session, col, select

from consentflow import addresses, audit, i18n
from consentflow.actors import Actor, audit_fields, check_text, column_length
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.keys import reference_key, subject_ref
from consentflow.models import Subject

#: The longest external id: the column's length.
MAX_EXTERNAL_ID = column_length("subject", "external_id")
#: The identifier rule as a regular expression (the API's path and query parameters use it).
EXTERNAL_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._:+-]{{0,{MAX_EXTERNAL_ID - 1}}}$"
_EXTERNAL_ID = re.compile(EXTERNAL_ID_PATTERN)
_ID_CHAR = re.compile(r"[A-Za-z0-9._:+-]")
#: The longest language tag stored: the column's length (RFC 5646 section 4.4.1 asks for 35).
MAX_LOCALE = column_length("subject", "locale")


def check_external_id(external_id: str) -> str:
    """The id as stored (surrounding blanks trimmed), or ``InvalidInput`` saying what breaks the
    identifier rule (see the module docstring); the id itself is never echoed."""
    external_id = external_id.strip()
    if _EXTERNAL_ID.match(external_id):
        return external_id
    rule = (
        f"use 1 to {MAX_EXTERNAL_ID} letters, digits or . _ : + - (starting with a letter or digit)"
    )
    if not external_id or len(external_id) > MAX_EXTERNAL_ID:
        raise InvalidInput(f"bad external id: {rule}")
    if "@" in external_id:
        raise InvalidInput(
            "bad external id: an email address cannot be an id (no '@'); give your own "
            "identifier for the person, and the address as their email"
        )
    bad = next((c for c in external_id if not _ID_CHAR.match(c)), None)
    if bad is None:
        raise InvalidInput(f"bad external id: it must start with a letter or digit; {rule}")
    raise InvalidInput(f"bad external id: {bad!r} is not allowed; {rule}")


def check_email(email: str | None) -> str | None:
    """The stored form of an optional address (``addresses.check``); ``InvalidInput`` if bad."""
    stored = addresses.check(email)
    if stored is not None:
        check_text(stored, "subject", "email", "the email address")
    return stored


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


def reference(secret: bytes, external_id: str, generation: int = 1) -> str:
    """The subject reference of the ``generation``-th registration of ``external_id``."""
    return subject_ref(secret, external_id if generation == 1 else f"{external_id}#{generation}")


def new_references(
    session: Session, secret: bytes, external_ids: Iterable[str]
) -> dict[str, tuple[str, int]]:
    """For ids not registered now: (reference, generation) of a new registration of each. An id
    whose earlier registrations were erased gets the next generation (one query for the usual
    case, where none was)."""
    wanted = {ext: reference(secret, ext) for ext in set(external_ids)}
    out = {ext: (ref, 1) for ext, ref in wanted.items()}
    taken = set(
        session.exec(
            select(Subject.subject_ref).where(col(Subject.subject_ref).in_(wanted.values()))
        )
    )
    for ext, ref in wanted.items():
        if ref in taken:  # erased before: the next registration (rare; one lookup each)
            generation = 2
            while _ref_taken(session, reference(secret, ext, generation)):
                generation += 1
            out[ext] = (reference(secret, ext, generation), generation)
    return out


def _ref_taken(session: Session, ref: str) -> bool:
    return session.exec(select(Subject.id).where(Subject.subject_ref == ref)).first() is not None


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
    ref, generation = new_references(session, reference_key(session), [external_id])[external_id]
    subject = Subject(
        external_id=external_id,
        subject_ref=ref,
        generation=generation,
        email=email,
        locale=locale,
    )
    session.add(subject)
    session.flush()
    audit.record(
        session,
        "subject.created",
        subject_ref=subject.subject_ref,
        detail={"has_email": email is not None, "locale": locale}
        | ({"generation": generation} if generation > 1 else {}),
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

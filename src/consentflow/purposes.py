"""Purposes and their immutable, versioned notices, in several languages.

A notice version has a default text (``title``, ``description``) and optional texts per language
(``PurposeVersion.texts``: ``{"fr": {"title": ..., "description": ...}}``, tags lower-case). A
translation is part of the notice people see, so adding or changing one publishes a new version
(editorial unless said otherwise), like any other change; versions are never updated.

Invariants: when a revision changes the default title or description, the translations of the
previous version are NOT carried forward (only those given with the revision are), so nobody
reads a translation of an older notice: they get the new default text until it is translated.
``text_for`` falls back field by field: ``fr-CA`` -> ``fr`` -> the default text. The default
locale (``en``) has no entry of its own: its text is the default text.

Publishing chains the notice: the audit entry of every version (``purpose.created``,
``purpose.revised``) carries ``"v": 2`` and ``"notice"``, the SHA-256 of the whole version as
people read it (``notice_digest``: title, description, every translation, lawful basis, data
categories, validity, materiality), so ``integrity`` finds a notice edited after publication.
Entries of format 1 (before this; no ``v``) chained only the title, basis, categories, validity,
materiality and the list of locales.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func
from sqlmodel import Session, col, select

from consentflow import audit, i18n
from consentflow.actors import Actor, audit_fields, check_text, unprintable
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.models import LawfulBasis, Purpose, PurposeVersion

_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PurposeInfo:
    """What the lifecycle rules need to know about a purpose, read once per change or batch."""

    id: int
    key: str
    current_version: int
    validity_days: int
    #: The newest version that changed the notice materially: consents on older versions must be
    #: re-confirmed. Version 1 counts as the original notice.
    material_version: int


#: ``{locale: {"title": ..., "description": ...}}``, either field optional.
Texts = dict[str, dict[str, str]]


@dataclass(frozen=True)
class NoticeText:
    """A notice's title and description for one reader, and the language each is written in
    (the default text's is ``None``: the default language), for ``lang`` attributes."""

    title: str
    description: str
    title_locale: str | None
    description_locale: str | None


def _check_texts(texts: Texts | None) -> Texts:
    """Per-locale texts, checked and keyed by normalised tag; ``InvalidInput`` names the fault."""
    checked: Texts = {}
    for tag, entry in (texts or {}).items():
        locale = i18n.normalise_tag(tag)
        if locale is None or len(locale) > 35:
            raise InvalidInput(f"bad locale {tag!r}: use a language tag such as fr or fr-CA")
        if locale == i18n.DEFAULT:
            raise InvalidInput(
                f"{tag!r} is the default language: give its text as the title and description"
            )
        unknown = set(entry) - {"title", "description"}
        if unknown:
            raise InvalidInput(f"unknown text field {sorted(unknown)[0]!r} for locale {tag!r}")
        title, description = entry.get("title"), entry.get("description")
        if title is None and description is None:
            raise InvalidInput(f"give a title or a description for locale {tag!r}")
        fields: dict[str, str] = {}
        if title is not None:
            if not title.strip() or len(title.strip()) > 200:
                raise InvalidInput(f"the {tag} title must be 1 to 200 characters")
            fields["title"] = title.strip()
        if description is not None:
            fields["description"] = description
        checked[locale] = {**checked.get(locale, {}), **fields}
    return checked


def text_for(version: PurposeVersion, locale: str | None) -> NoticeText:
    """The notice in ``locale``, field by field: ``fr-ca``, then ``fr``, then the default text."""
    title = description = None
    title_locale = description_locale = None
    for tag in i18n.fallback_chain(locale):
        entry = (version.texts or {}).get(tag, {})
        if title is None and entry.get("title"):
            title, title_locale = entry["title"], tag
        if description is None and entry.get("description"):
            description, description_locale = entry["description"], tag
    return NoticeText(
        title=title if title is not None else version.title,
        description=description if description is not None else version.description,
        title_locale=title_locale,
        description_locale=description_locale,
    )


def title_for(version: PurposeVersion, locale: str | None) -> str:
    """The notice's title in ``locale``, falling back to the default title."""
    return text_for(version, locale).title


def _check_fields(
    title: str | None, description: str | None, validity_days: int | None, lawful_basis: str | None
) -> None:
    if title is not None and not title.strip():
        raise InvalidInput("the title must not be empty")
    if title is not None:
        check_text(title, "purpose_version", "title", "the title")
    if description is not None and unprintable(description.replace("\n", " ")) is not None:
        raise InvalidInput("the description must be printable text (line breaks are allowed)")
    if validity_days is not None and not 1 <= validity_days <= 36500:
        raise InvalidInput(f"validity days must be between 1 and 36500, got {validity_days}")
    if lawful_basis is not None and lawful_basis not in set(LawfulBasis):
        choices = ", ".join(LawfulBasis)
        raise InvalidInput(f"unknown lawful basis {lawful_basis!r}: use one of {choices}")


def add(
    session: Session,
    key: str,
    *,
    title: str,
    validity_days: int,
    description: str = "",
    lawful_basis: str = LawfulBasis.CONSENT,
    data_categories: list[str] | None = None,
    texts: Texts | None = None,
    actor: Actor | None = None,
) -> PurposeVersion:
    """Register a purpose with its first notice version (``actor``: who, for the audit trail);
    ``texts``: the notice in other languages."""
    if not _KEY.match(key):
        raise InvalidInput(
            f"bad purpose key {key!r}: use lowercase letters, digits, '_', '-', '.' (max 64)"
        )
    _check_fields(title, description, validity_days, lawful_basis)
    checked = _check_texts(texts)
    if session.exec(select(Purpose.id).where(Purpose.key == key)).first() is not None:
        raise Conflict(f"purpose {key!r} exists already: use `purpose revise` to change it")
    purpose = Purpose(key=key, current_version=1)
    session.add(purpose)
    session.flush()
    assert purpose.id is not None
    version = PurposeVersion(
        purpose_id=purpose.id,
        version=1,
        title=title.strip(),
        description=description,
        lawful_basis=lawful_basis,
        data_categories=list(data_categories or []),
        texts=checked,
        validity_days=validity_days,
        material=False,
    )
    session.add(version)
    session.flush()
    audit.record(
        session,
        "purpose.created",
        purpose_key=key,
        detail=_version_detail(version),
        **audit_fields(actor),
    )
    return version


def revise(
    session: Session,
    key: str,
    *,
    material: bool,
    title: str | None = None,
    description: str | None = None,
    lawful_basis: str | None = None,
    data_categories: list[str] | None = None,
    validity_days: int | None = None,
    texts: Texts | None = None,
    actor: Actor | None = None,
) -> PurposeVersion:
    """Publish a new notice version; earlier versions stay exactly as subjects saw them.

    A material revision means every consent resting on an older version must be re-confirmed
    (the re-consent flow asks, then invalidates); an editorial one asks nobody. ``texts`` add or
    change translations (merged, field by field, over those carried from the latest version).
    """
    _check_fields(title, description, validity_days, lawful_basis)
    given = _check_texts(texts)
    purpose = session.exec(select(Purpose).where(Purpose.key == key).with_for_update()).first()
    if purpose is None:
        raise NotFound(f"unknown purpose {key!r}: see `consentflow purpose list`")
    latest = _version(session, purpose.id, purpose.current_version)  # type: ignore[arg-type]
    changes: dict[str, Any] = {
        "title": title.strip() if title is not None else None,
        "description": description,
        "lawful_basis": lawful_basis,
        "data_categories": data_categories,
        "validity_days": validity_days,
    }
    changes = {k: v for k, v in changes.items() if v is not None and v != getattr(latest, k)}
    new_texts = _next_texts(
        latest, given, default_changed=bool({"title", "description"} & set(changes))
    )
    if new_texts != (latest.texts or {}):
        changes["texts"] = new_texts
    if not changes:
        raise InvalidInput(f"nothing to revise: give at least one changed field for {key!r}")
    new = PurposeVersion(
        purpose_id=latest.purpose_id,
        version=latest.version + 1,
        title=changes.get("title", latest.title),
        description=changes.get("description", latest.description),
        lawful_basis=changes.get("lawful_basis", latest.lawful_basis),
        data_categories=list(changes.get("data_categories", latest.data_categories)),
        texts=new_texts,
        validity_days=changes.get("validity_days", latest.validity_days),
        material=material,
    )
    session.add(new)
    purpose.current_version = new.version
    session.add(purpose)
    session.flush()
    audit.record(
        session,
        "purpose.revised",
        purpose_key=key,
        detail={**_version_detail(new), "changed": sorted(changes)},
        **audit_fields(actor),
    )
    return new


def _next_texts(latest: PurposeVersion, given: Texts, *, default_changed: bool) -> Texts:
    """The translations of the next version: the latest's (unless the default text changes),
    with the given ones merged over them."""
    carried: Texts = {} if default_changed else dict(latest.texts or {})
    for locale, fields in given.items():
        carried[locale] = {**carried.get(locale, {}), **fields}
    return carried


def _version(session: Session, purpose_id: int, version: int) -> PurposeVersion:
    return session.exec(
        select(PurposeVersion).where(
            PurposeVersion.purpose_id == purpose_id, PurposeVersion.version == version
        )
    ).one()


#: The format of a notice version's audit entry (see the module docstring).
NOTICE_FORMAT = 2


def notice_digest(v: PurposeVersion) -> str:
    """SHA-256 of a notice version's whole content as canonical JSON (sorted keys): what is
    chained when it is published, and what ``integrity`` recomputes from the stored row."""
    content = {
        "version": v.version,
        "title": v.title,
        "description": v.description,
        "lawful_basis": str(v.lawful_basis),
        "data_categories": list(v.data_categories or []),
        "texts": v.texts or {},
        "validity_days": v.validity_days,
        "material": bool(v.material),
    }
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _version_detail(v: PurposeVersion) -> dict[str, Any]:
    return {
        "v": NOTICE_FORMAT,
        "notice": notice_digest(v),
        "version": v.version,
        "title": v.title,
        "lawful_basis": v.lawful_basis,
        "data_categories": v.data_categories,
        "validity_days": v.validity_days,
        "material": v.material,
        "locales": sorted(v.texts or {}),
    }


def info(session: Session, keys: list[str] | None = None) -> dict[str, PurposeInfo]:
    """``PurposeInfo`` by key, for the given keys (all purposes when ``keys`` is None).

    Raises ``NotFound`` naming the first unknown key.
    """
    current = PurposeVersion
    material = (
        select(
            PurposeVersion.purpose_id,
            func.max(PurposeVersion.version).label("material_version"),
        )
        .where(col(PurposeVersion.material).is_(True))
        .group_by(col(PurposeVersion.purpose_id))
        .subquery()
    )
    columns: list[Any] = [
        Purpose.id,
        Purpose.key,
        Purpose.current_version,
        current.validity_days,
        material.c.material_version,
    ]
    stmt = (
        select(*columns)
        .join(
            current,
            (current.purpose_id == Purpose.id) & (current.version == Purpose.current_version),
        )
        .outerjoin(material, material.c.purpose_id == Purpose.id)
    )
    if keys is not None:
        stmt = stmt.where(col(Purpose.key).in_(keys))
    found = {
        row.key: PurposeInfo(
            id=row.id,
            key=row.key,
            current_version=row.current_version,
            validity_days=row.validity_days,
            material_version=row.material_version or 1,
        )
        for row in session.exec(stmt)
    }
    for key in keys or []:
        if key not in found:
            raise NotFound(f"unknown purpose {key!r}: see `consentflow purpose list`")
    return found


def get(session: Session, key: str) -> PurposeInfo:
    return info(session, [key])[key]


def versions(session: Session, key: str | None = None) -> list[tuple[str, PurposeVersion]]:
    """Every notice version (of one purpose, or all), oldest first."""
    stmt = select(Purpose.key, PurposeVersion).join(
        PurposeVersion, col(PurposeVersion.purpose_id) == Purpose.id
    )
    if key is not None:
        get(session, key)
        stmt = stmt.where(Purpose.key == key)
    rows = session.exec(stmt.order_by(col(Purpose.key), col(PurposeVersion.version))).all()
    return [(k, v) for k, v in rows]


def list_current(session: Session) -> list[tuple[str, PurposeVersion]]:
    """Each purpose with its current notice version, by key."""
    stmt = (
        select(Purpose.key, PurposeVersion)
        .join(
            PurposeVersion,
            (col(PurposeVersion.purpose_id) == Purpose.id)
            & (col(PurposeVersion.version) == Purpose.current_version),
        )
        .order_by(col(Purpose.key))
    )
    return [(k, v) for k, v in session.exec(stmt).all()]

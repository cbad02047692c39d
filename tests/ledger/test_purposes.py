"""Purposes and their immutable, versioned notices."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import db, lifecycle, purposes, subjects
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, PurposeVersion


def version_rows(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as s:
        rows = s.exec(
            select(PurposeVersion).order_by(
                col(PurposeVersion.purpose_id), col(PurposeVersion.version)
            )
        ).all()
    return [r.model_dump() for r in rows]


def audit_actions(engine: Engine) -> list[tuple[str, str | None, dict[str, Any]]]:
    with Session(engine) as s:
        rows = s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
    return [(r.action, r.purpose_key, r.detail) for r in rows]


def test_add_records_version_one(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        v = purposes.add(
            s,
            "news",
            title="  News  ",
            validity_days=30,
            description="Monthly news.",
            lawful_basis="consent",
            data_categories=["email"],
        )
    assert (v.version, v.title, v.material, v.validity_days) == (1, "News", False, 30)
    with Session(engine) as s:
        info = purposes.get(s, "news")
    assert (info.current_version, info.material_version, info.validity_days) == (1, 1, 30)
    ((action, key, detail),) = audit_actions(engine)
    assert (action, key) == ("purpose.created", "news")
    with Session(engine) as s:
        stored = s.exec(select(PurposeVersion)).one()
    assert detail == {
        "v": 2,
        "notice": purposes.notice_digest(stored),
        "version": 1,
        "title": "News",
        "lawful_basis": "consent",
        "data_categories": ["email"],
        "validity_days": 30,
        "material": False,
        "locales": [],
    }


def test_revisions_never_rewrite_earlier_versions(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30, data_categories=["email"])
        purposes.add(s, "offers", title="Offers", validity_days=90)
    v1 = version_rows(engine)
    with db.session_scope(engine) as s:
        v2 = purposes.revise(s, "news", material=False, description="typo fixed")
    with db.session_scope(engine) as s:
        v3 = purposes.revise(
            s, "news", material=True, data_categories=["email", "location"], validity_days=60
        )
    assert (v2.version, v2.material, v2.description, v2.validity_days) == (
        2,
        False,
        "typo fixed",
        30,
    )
    assert (v3.version, v3.material, v3.data_categories, v3.validity_days) == (
        3,
        True,
        ["email", "location"],
        60,
    )
    assert v3.title == "News" and v3.description == "typo fixed"  # carried over
    rows = version_rows(engine)
    assert [r for r in rows if r["version"] == 1] == v1  # untouched
    with Session(engine) as s:
        info = purposes.get(s, "news")
        listed = [(k, v.version) for k, v in purposes.versions(s, "news")]
        current = [(k, v.version) for k, v in purposes.list_current(s)]
    assert (info.current_version, info.material_version, info.validity_days) == (3, 3, 60)
    assert listed == [("news", 1), ("news", 2), ("news", 3)]
    assert current == [("news", 3), ("offers", 1)]
    revised = [d for a, _, d in audit_actions(engine) if a == "purpose.revised"]
    assert [d["changed"] for d in revised] == [
        ["description"],
        ["data_categories", "validity_days"],
    ]


def test_material_version_is_the_latest_material_revision(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.revise(s, "news", material=True, title="News 2")
        purposes.revise(s, "news", material=False, title="News 3")
    with Session(engine) as s:
        info = purposes.get(s, "news")
    assert (info.current_version, info.material_version) == (3, 2)


def test_consents_stay_pinned_to_the_version_they_were_given_under(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        subjects.add(s, "alice")
        subjects.add(s, "bob")
        lifecycle.grant(s, "alice", "news", Actor())
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=False, title="News!")
        lifecycle.grant(s, "bob", "news", Actor())
    with Session(engine) as s:
        alice = lifecycle.current(s, "alice")[0]
        bob = lifecycle.current(s, "bob")[0]
    assert (alice.purpose_version, bob.purpose_version) == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"key": "Bad Key"}, InvalidInput, "bad purpose key"),
        ({"key": "-dash"}, InvalidInput, "bad purpose key"),
        ({"key": "x" * 65}, InvalidInput, "bad purpose key"),
        ({"title": "   "}, InvalidInput, "title"),
        ({"validity_days": 0}, InvalidInput, "between 1 and 36500"),
        ({"validity_days": 36501}, InvalidInput, "between 1 and 36500"),
        ({"lawful_basis": "whim"}, InvalidInput, "unknown lawful basis"),
        ({"key": "news"}, Conflict, "exists already"),
    ],
)
def test_add_rejects(engine: Engine, kwargs: dict[str, Any], error: type, phrase: str) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
    args: dict[str, Any] = {"key": "other", "title": "Other", "validity_days": 30} | kwargs
    before = version_rows(engine)
    with pytest.raises(error, match=phrase), db.session_scope(engine) as s:
        purposes.add(s, args.pop("key"), **args)
    assert version_rows(engine) == before


@pytest.mark.parametrize("days", [1, 36500])
def test_validity_bounds_are_inclusive(engine: Engine, days: int) -> None:
    with db.session_scope(engine) as s:
        assert purposes.add(s, "p", title="P", validity_days=days).validity_days == days


def test_revise_rejects(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30, lawful_basis="contract")
    before = version_rows(engine)
    cases: list[tuple[str, dict[str, Any], type, str]] = [
        ("news", {}, InvalidInput, "nothing to revise"),
        ("news", {"title": "News", "validity_days": 30}, InvalidInput, "nothing to revise"),
        ("news", {"lawful_basis": "contract"}, InvalidInput, "nothing to revise"),
        ("news", {"validity_days": 0}, InvalidInput, "between 1 and 36500"),
        ("news", {"lawful_basis": "whim"}, InvalidInput, "lawful basis"),
        ("nope", {"title": "X"}, NotFound, "unknown purpose 'nope'"),
    ]
    for key, fields, error, phrase in cases:
        with pytest.raises(error, match=phrase), db.session_scope(engine) as s:
            purposes.revise(s, key, material=True, **fields)
    assert version_rows(engine) == before
    with Session(engine) as s, pytest.raises(NotFound, match="unknown purpose 'nope'"):
        purposes.versions(s, "nope")
    with Session(engine) as s, pytest.raises(NotFound, match="unknown purpose 'nope'"):
        purposes.info(s, ["news", "nope"])


# ----------------------------------------------------------------------- texts per language


def test_translations_are_versions_and_fall_back_field_by_field(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        v1 = purposes.add(
            s,
            "news",
            title="News",
            description="Monthly news.",
            validity_days=30,
            texts={"fr": {"title": "  Actualités  "}, "de-AT": {"title": "Neuigkeiten"}},
        )
    assert v1.texts == {"fr": {"title": "Actualités"}, "de-at": {"title": "Neuigkeiten"}}
    v1_rows = version_rows(engine)
    with db.session_scope(engine) as s:
        v2 = purposes.revise(
            s, "news", material=False, texts={"fr": {"description": "Les nouvelles du mois."}}
        )
    # A translation is a new (editorial) version, merged over the texts carried forward.
    assert (v2.version, v2.material, v2.title) == (2, False, "News")
    assert v2.texts == {
        "fr": {"title": "Actualités", "description": "Les nouvelles du mois."},
        "de-at": {"title": "Neuigkeiten"},
    }
    assert version_rows(engine)[:1] == v1_rows
    fr_ca = purposes.text_for(v2, "fr-CA")  # fr-ca -> fr
    assert (fr_ca.title, fr_ca.description, fr_ca.title_locale) == (
        "Actualités",
        "Les nouvelles du mois.",
        "fr",
    )
    de_at = purposes.text_for(v2, "de_AT")  # the title is translated, the description is not
    assert (de_at.title, de_at.description) == ("Neuigkeiten", "Monthly news.")
    assert (de_at.title_locale, de_at.description_locale) == ("de-at", None)
    assert purposes.title_for(v2, "de") == "News"  # only Austrian German was given
    for unknown in ("es", "xx", None, "not a tag!"):
        assert purposes.title_for(v2, unknown) == "News"
    changed = [d["changed"] for a, _, d in audit_actions(engine) if a == "purpose.revised"]
    assert changed == [["texts"]]
    assert [d["locales"] for a, _, d in audit_actions(engine)] == [["de-at", "fr"]] * 2


def test_a_new_default_text_drops_translations_not_given_again(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(
            s,
            "news",
            title="News",
            validity_days=30,
            texts={"fr": {"title": "Actualités"}, "es": {"title": "Noticias"}},
        )
        v2 = purposes.revise(s, "news", material=False, validity_days=60)
        v3 = purposes.revise(
            s,
            "news",
            material=True,
            title="News and offers",
            texts={"fr": {"title": "Actualités et offres"}},
        )
    assert v2.texts == {"fr": {"title": "Actualités"}, "es": {"title": "Noticias"}}
    # Nobody reads a translation of the older notice: Spanish falls back to the new default.
    assert v3.texts == {"fr": {"title": "Actualités et offres"}}
    assert purposes.title_for(v3, "es") == "News and offers"
    assert purposes.title_for(v3, "fr") == "Actualités et offres"


@pytest.mark.parametrize(
    ("texts", "phrase"),
    [
        ({"f": {"title": "X"}}, "bad locale 'f'"),
        ({"fr fr": {"title": "X"}}, "bad locale"),
        ({"en": {"title": "X"}}, "default language"),
        ({"fr": {}}, "give a title or a description for locale 'fr'"),
        ({"fr": {"title": "  "}}, "fr title must be 1 to 200"),
        ({"fr": {"title": "x" * 201}}, "fr title must be 1 to 200"),
        ({"fr": {"summary": "x"}}, "unknown text field 'summary'"),
    ],
)
def test_bad_texts_change_nothing(engine: Engine, texts: Any, phrase: str) -> None:
    with pytest.raises(InvalidInput, match=phrase), db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30, texts=texts)
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30, texts={"fr": {"title": "A"}})
    before = version_rows(engine)
    with pytest.raises(InvalidInput, match=phrase), db.session_scope(engine) as s:
        purposes.revise(s, "news", material=False, texts=texts)
    with pytest.raises(InvalidInput, match="nothing to revise"), db.session_scope(engine) as s:
        purposes.revise(s, "news", material=False, texts={"FR": {"title": "A"}})  # the same
    assert version_rows(engine) == before


def test_published_notice_text_is_chained(engine: Engine) -> None:
    """The whole notice (description and every translation included) is hashed into the entry
    that publishes it, so an edit of the stored text no longer matches the chain."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30, description="Weekly.")
        purposes.revise(s, "news", material=False, texts={"fr": {"title": "Infos"}})
    with Session(engine) as s:
        stored = s.exec(select(PurposeVersion).order_by(col(PurposeVersion.version))).all()
    chained = [d["notice"] for a, _, d in audit_actions(engine) if a.startswith("purpose.")]
    assert chained == [purposes.notice_digest(v) for v in stored]
    assert len(set(chained)) == 2
    edited = stored[1].model_copy(update={"texts": {"fr": {"title": "Autre"}}})
    assert purposes.notice_digest(edited) != chained[1]
    edited = stored[0].model_copy(update={"description": "Daily."})
    assert purposes.notice_digest(edited) != chained[0]

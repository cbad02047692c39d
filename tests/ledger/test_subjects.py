"""Subjects' locale (``subjects.check_locale``): none given is none stored, so the person's
browser decides; only a malformed tag is refused (issue 9: an unknown locale is never an error)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from consentflow import db, i18n, receipt, subjects
from consentflow.errors import InvalidInput
from consentflow.models import AuditEntry, Subject
from tests.support.seeding import count


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("fr", "fr"),
        (" fr-CA ", "fr-CA"),  # kept as given, trimmed
        ("de_AT", "de_AT"),
        ("xx", "xx"),  # well-formed, no catalog: kept, rendered in English
        ("zh-Hant-TW", "zh-Hant-TW"),
        ("en-x-a", "en-x-a"),  # a one-letter singleton (private use)
        ("en-" + "-".join(["abcdefgh"] * 3) + "-ab", "en-" + "-".join(["abcdefgh"] * 3) + "-ab"),
    ],
)
def test_a_well_formed_locale_is_kept_and_none_stays_none(given: str | None, stored: str) -> None:
    assert subjects.check_locale(given) == stored


@pytest.mark.parametrize(
    "given",
    ["??", "f", "1x", "fr fr", "fr--ca", "-fr", "fr-", "en-abcdefghi", "en-" + "a" * 40, "é"],
)
def test_a_malformed_locale_is_one_clear_line(given: str) -> None:
    with pytest.raises(InvalidInput, match="bad locale") as caught:
        subjects.check_locale(given)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 120


def test_a_subject_added_without_a_locale_has_none(engine: Engine) -> None:
    with db.session_scope(engine) as s, pytest.raises(InvalidInput, match="bad locale"):
        subjects.add(s, "ann", locale="f r")
    assert count(engine, Subject) == 0 and count(engine, AuditEntry) == 0
    with db.session_scope(engine) as s:
        subjects.add(s, "ann")
        subjects.add(s, "bob", locale="de")
    with db.session_scope(engine) as s:
        ann, bob = subjects.require(s, "ann"), subjects.require(s, "bob")
        assert (ann.locale, bob.locale) == (None, "de")
        # The browser decides for ann; bob's own language wins over it.
        assert i18n.negotiate(ann.locale, "de-AT, en;q=0.5") == "de"
        assert i18n.negotiate(bob.locale, "fr") == "de"
        # The receipt states a language all the same: English when none is recorded.
        assert receipt.build(s, "ann")["language"] == "en"
        assert receipt.build(s, "bob")["language"] == "de"

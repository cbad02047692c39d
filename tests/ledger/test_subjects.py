"""Subjects' locale (``subjects.check_locale``): none given is none stored, so the person's
browser decides; only a malformed tag is refused (issue 9: an unknown locale is never an error).
Their external id (``subjects.check_external_id``): one rule on every way in (issue 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy.engine import Engine

from consentflow import db, i18n, receipt, subjects
from consentflow.errors import InvalidInput
from consentflow.models import AuditEntry, Subject
from tests.support.seeding import count
from tests.support.web import bearer, client, seed


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


# ------------------------------------------------------------ one identifier rule (issue 14.7)

#: Ids every way in refuses, and what the one line says; ``'a%2Fb'`` and control characters were
#: accepted but could never be addressed through the API, an email leaked into logs and errors.
BAD_IDS = [
    ("a/b", "'/' is not allowed"),
    ("ann@example.com", "an email address cannot be an id"),
    ("tab\there", "'\\t' is not allowed"),
    ("bell\x07", "'\\x07' is not allowed"),
    ("a b", "' ' is not allowed"),
    ("..", "must start with a letter or digit"),
    ("x" * 201, "use 1 to 200"),
]
GOOD_ID = "crm:42.a_b+c-D"


def test_one_identifier_rule_on_the_cli_the_import_and_the_api(
    cli: Any, engine: Engine, tmp_path: Path
) -> None:
    t = seed(engine)
    before = count(engine, Subject)
    csv = tmp_path / "ids.csv"
    csv.write_text("external_id\n" + "".join(f'"{i}"\n' for i, _ in BAD_IDS), encoding="utf-8")
    r = cli("subject", "import", str(csv))
    assert r.code == 2 and len(r.err.splitlines()) == len(BAD_IDS) + 1, r.err
    for (_, phrase), line in zip(BAD_IDS, r.err.splitlines(), strict=False):
        # a control character is refused in any column of the file, the id's included
        assert phrase in line or "control character" in line, line
        assert "ann@" not in line
    with client() as api:
        for bad, phrase in BAD_IDS:
            r = cli("subject", "add", bad)
            assert r.code == 2 and r.out == "" and phrase in r.err, (bad, r.err)
            assert len(r.err.splitlines()) == 1 and "ann@" not in r.err
            answer = api.post(
                "/api/v1/subjects", json={"external_id": bad}, headers=bearer(t.admin)
            )
            assert answer.status_code == 422, (bad, answer.text)
            assert "ann@" not in answer.text
            # The path and the query take the same rule: a 422 naming the parameter, not a
            # lookup (a '/' is a route that does not exist: 404 either way).
            quoted = quote(bad, safe="")
            got = api.get(f"/api/v1/subjects/{quoted}", headers=bearer(t.admin))
            assert got.status_code == (404 if bad in ("a/b", "..") else 422), (bad, got.text)
            got = api.get(
                "/api/v1/check",
                params={"subject": bad, "purpose": "news"},
                headers=bearer(t.system),
            )
            assert got.status_code == 422 and "subject" in got.text, (bad, got.text)
        assert count(engine, Subject) == before

        # Every character the rule allows goes in by each door and is addressable by the API.
        assert cli("subject", "add", GOOD_ID).code == 0
        made = api.post("/api/v1/subjects", json={"external_id": "api.1"}, headers=bearer(t.admin))
        assert made.status_code == 201, made.text
        csv.write_text("external_id\nimp-1:x+y_z.w\n", encoding="utf-8")
        assert cli("subject", "import", str(csv)).code == 0
        for ext in (GOOD_ID, "api.1", "imp-1:x+y_z.w"):
            got = api.get(f"/api/v1/subjects/{quote(ext, safe='')}", headers=bearer(t.admin))
            assert got.status_code == 200 and got.json()["external_id"] == ext, got.text
            granted = api.post(
                f"/api/v1/subjects/{quote(ext, safe='')}/consents/news/grant",
                headers=bearer(t.admin),
            )
            assert granted.status_code == 200, granted.text

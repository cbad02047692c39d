"""``consentflow list COHORT``: the API's list vocabulary from the terminal; the same bytes as the
API's export, to stdout or a file, audited; a bad filter is one line naming it, exit 2, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from consentflow import db, lifecycle, subjects
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, AuditHead
from consentflow.reports import cohorts
from tests.support.web import Tokens, bearer, client, seed

GIVEN = ["alice", "bob", "c1"]


@pytest.fixture
def toks(engine: Engine) -> Tokens:
    made = seed(engine)  # crm: news; billing: invoices
    with db.session_scope(engine) as s:
        subjects.add(s, "c1")
        subjects.add(s, "gone")
        for ext in [*GIVEN, "gone"]:
            lifecycle.grant(s, ext, "news", Actor())
        lifecycle.revoke(s, "gone", "news", Actor())
    return made


def exported(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(s.exec(select(AuditEntry).where(AuditEntry.action == cohorts.EXPORTED)))


def test_a_list_goes_to_stdout_or_a_file_as_the_api_exports_it(
    engine: Engine, toks: Tokens, cli: Any, tmp_path: Path
) -> None:
    r = cli("list", "consents", "--purpose", "news", "--state", "given")
    assert r.code == 0, r.err
    assert [json.loads(line)["subject"] for line in r.out.splitlines()] == GIVEN
    with client() as c:
        api = c.get(
            "/api/v1/lists/consents/export",
            params={"purpose": "news", "state": "given"},
            headers=bearer(toks.admin),
        )
    # The same rows, bytes apart only where time moved on (none here: no consent has lapsed).
    assert r.out == api.text
    assert r.err.startswith("3 rows of consents: sha256 ")

    (tmp_path / "out").mkdir()  # tmp_path also holds the SQLite database
    target = tmp_path / "out" / "w.csv"
    r = cli("list", "withdrawals", "--format", "csv", "--include", "email", "-o", str(target))
    assert r.code == 0, r.err
    assert r.out == ""
    rows = target.read_text().splitlines()
    assert rows[0].split(",") == [*cohorts.DEFINITIONS[cohorts.Cohort.WITHDRAWALS].columns, "email"]
    assert len(rows) == 2 and ",gone," in rows[1]
    assert rows[1].endswith(",")  # gone has no address on file: an empty cell
    assert sorted(p.name for p in target.parent.iterdir()) == ["w.csv"]
    entries = [e for e in exported(engine) if e.channel == "support"]
    assert [(e.detail["cohort"], e.detail["count"], e.detail["email"]) for e in entries] == [
        ("consents", 3, False),
        ("withdrawals", 1, True),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nothing",), "unknown list 'nothing'"),
        (("consents", "--state", "happy"), "state: use one of"),
        (("consents", "--purpose", "nope"), "purpose: no such purpose 'nope'"),
        (("consents", "--days", "7"), "days: the consents list does not take it"),
        (("expiring", "--days", "x"), "days: a whole number"),
        (("withdrawals", "--since", "yesterday"), "since: not an ISO 8601"),
        (("consents", "--format", "xml"), "bad --format 'xml'"),
        (("consents", "--include", "phone"), "bad --include 'phone'"),
    ],
)
def test_a_bad_filter_is_one_line_and_writes_nothing(
    engine: Engine, toks: Tokens, cli: Any, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    with Session(engine) as s:
        before = s.exec(select(AuditHead.seq)).one()
    (tmp_path / "out").mkdir()
    r = cli("list", *args, "--output", str(tmp_path / "out" / "x"))
    assert r.code == 2
    assert r.out == ""
    assert len(r.err.splitlines()) == 1 and message in r.err, r.err
    assert list((tmp_path / "out").iterdir()) == []
    with Session(engine) as s:
        assert s.exec(select(AuditHead.seq)).one() == before

"""``consentflow export eligible``: the same rows as the API, to stdout or a file, audited; a
refusal is one line on stderr and leaves no file and no audit entry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from consentflow import db, lifecycle, subjects, transfers
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, AuditHead
from tests.support.web import Tokens, bearer, client, seed

GIVEN = ["alice", "bob", "c1"]
ARGS = ("export", "eligible", "--purpose", "news", "--system", "crm")


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
        return list(s.exec(select(AuditEntry).where(AuditEntry.action == transfers.EXPORTED)))


def sha(ids: list[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def test_the_rows_go_to_stdout_or_a_file_and_are_audited(
    engine: Engine, toks: Tokens, cli: Any, tmp_path: Path
) -> None:
    r = cli(*ARGS)
    assert r.code == 0, r.err
    assert [json.loads(line)["subject"] for line in r.out.splitlines()] == GIVEN
    with client() as c:
        api = c.get(
            "/api/v1/export/eligible",
            params={"purpose": "news", "system": "crm"},
            headers=bearer(toks.admin),
        )
    assert r.out == api.text  # both doors write the same bytes
    assert r.err.startswith(f"3 subjects for news to crm: sha256 {sha(GIVEN)}, audit entry ")

    (tmp_path / "out").mkdir()  # tmp_path also holds the SQLite database
    target = tmp_path / "out" / "crm.csv"
    target.write_text("old\n")
    r = cli(*ARGS, "--format", "csv", "--output", str(target))
    assert r.code == 0, r.err
    assert r.out == ""
    rows = target.read_text().splitlines()
    assert rows[0] == "subject,event_id,purpose_version,valid_until"
    assert [row.split(",")[0] for row in rows[1:]] == GIVEN
    assert sorted(p.name for p in target.parent.iterdir()) == ["crm.csv"]  # no temporary file left
    assert f" to {target}: " in r.err

    cli_entries = [e for e in exported(engine) if e.channel == "support"]
    assert len(cli_entries) == 2
    for entry, fmt in zip(cli_entries, ("jsonl", "csv"), strict=True):
        assert entry.actor_type == "agent" and entry.actor
        assert entry.detail["format"] == fmt
        assert (entry.detail["count"], entry.detail["complete"]) == (3, True)
        assert entry.detail["sha256"] == sha(GIVEN)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--purpose", "nope", "--system", "crm"), 2, "unknown purpose 'nope'"),
        (("--purpose", "news", "--system", "nope"), 2, "unknown system 'nope'"),
        (
            ("--purpose", "news", "--system", "billing"),
            1,
            "system 'billing' is not registered for purpose 'news' (system_not_authorised)",
        ),
        (("--purpose", "news", "--system", "crm", "--format", "xml"), 2, "bad --format 'xml'"),
    ],
)
def test_a_refusal_is_one_line_and_writes_nothing(
    engine: Engine,
    toks: Tokens,
    cli: Any,
    tmp_path: Path,
    args: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    with Session(engine) as s:
        before = s.exec(select(AuditHead.seq)).one()
    (tmp_path / "out").mkdir()  # tmp_path also holds the SQLite database
    target = tmp_path / "out" / "out.jsonl"
    r = cli("export", "eligible", *args, "--output", str(target))
    assert r.code == code
    assert r.out == ""
    assert len(r.err.splitlines()) == 1 and message in r.err
    assert "Traceback" not in r.err
    assert list(target.parent.iterdir()) == []
    with Session(engine) as s:
        assert s.exec(select(AuditHead.seq)).one() == before


def test_an_output_that_cannot_be_written_is_refused_before_anything_goes(
    engine: Engine, toks: Tokens, cli: Any, tmp_path: Path
) -> None:
    r = cli(*ARGS, "--output", str(tmp_path / "missing" / "out.jsonl"))
    assert r.code == 2
    assert r.err.startswith("consentflow: cannot write --output ") and len(r.err.splitlines()) == 1
    assert exported(engine) == []

"""Bulk import from another consent platform: validation, all-or-nothing, idempotence, scale,
and the fast paths that keep it at the hardware's pace (issue 11)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import (
    access,
    audit,
    db,
    erasure,
    importer,
    keys,
    lifecycle,
    purposes,
    subjects,
    systems,
)
from consentflow.errors import InvalidInput
from consentflow.ledger import _batch, _write
from consentflow.models import AuditEntry, Consent, ConsentEvent, Delivery, Subject, metadata

HEADER = "external_id,email,locale,purpose,state,given_at,valid_until\n"
GOOD = HEADER + (
    "alice,alice@example.com,en,news,given,2026-01-01T00:00:00Z,\n"
    "alice,alice@example.com,en,offers,withdrawn,2025-06-01T00:00:00Z,\n"
    "bob,,fr,,,,\n"
    "carol,carol@example.com,,news,expired,2024-01-01,2024-06-01\n"
    "dave,,,news,refused,,\n"
    "erin,,,offers,requested,2025-02-03T04:05:06+02:00,\n"
)

#: line number -> (row, a phrase the error must contain); None marks the good rows
BAD_ROWS: dict[int, tuple[str, str | None]] = {
    2: ("alice,alice@example.com,en,news,given,2026-01-01,", None),
    3: ("bob,,,news,given,not-a-date,", "bad given_at 'not-a-date'"),
    4: ("carol,,,nosuch,given,,", "unknown purpose 'nosuch'"),
    5: ("dave,,,news,maybe,,", "bad state 'maybe'"),
    6: ("alice,alice@example.com,en,news,withdrawn,,", "same subject and purpose (line 2)"),
    7: ("alice,other@example.com,en,offers,given,,", "differs from line 2"),
    8: (",x@example.com,,news,given,,", "external id"),
    9: ("erin,,,,given,,", "need a purpose"),
    10: ("frank,,,news,given,2025-05-01,2025-04-01", "valid_until must be after given_at"),
    11: ("gina,gina@example.com,,offers,given,,", None),
    12: ("hank,not-an-email,,,,,", "bad email"),
    13: ("ivan,,,news,invalidated,,", "bad state 'invalidated'"),
    14: ("judy,,,news,given,2099-01-01,", "in the future"),
    15: ("kim,,,news,given,,2024-01-01,extra", "more fields"),
    # One bare address per row: no list, no display name (issue 9).
    16: ('lena,"a,b@example.test",,,,,', "bad email address"),
    17: ("mia,Mia <mia@example.com>,,,,,", "bad email address"),
    18: ('nina,"nina@example.com, bob@example.com",,,,,', "bad email address"),
    # A malformed or overlong locale is refused; a well-formed one without a catalog is kept.
    19: ("olga,,1x,,,,", "bad locale '1x'"),
    20: ("pia,,en-" + "-".join(["abcdefgh"] * 4) + ",,,,", "bad locale"),
    21: ("quinn,,pt-BR,,,,", None),
}


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {
            t.name: s.execute(sa_select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def write(tmp_path: Path, text: str, name: str = "consents.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def bad_file(tmp_path: Path) -> Path:
    body = "".join(row + "\n" for _, (row, _) in sorted(BAD_ROWS.items()))
    return write(tmp_path, HEADER + body, "bad.csv")


def consents(engine: Engine) -> dict[tuple[str, str], Consent]:
    from consentflow.models import Purpose

    with Session(engine) as s:
        rows = s.exec(
            select(Subject.external_id, Purpose.key, Consent)
            .join(Subject, col(Subject.id) == Consent.subject_id)
            .join(Purpose, col(Purpose.id) == Consent.purpose_id)
        ).all()
    return {(e, k): c for e, k, c in rows}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        purposes.add(s, "offers", title="Offers", validity_days=30)
        systems.add(s, "crm", ["news", "offers"], webhook_url="https://crm.example.com/hook")
    return engine


def assert_ledger_consistent(engine: Engine) -> None:
    with Session(engine) as s:
        for external_id in s.exec(select(Subject.external_id)).all():
            history = lifecycle.history(s, external_id)
            assert [e.seq for _, e in history] == list(range(1, len(history) + 1))
            current = {v.purpose: v for v in lifecycle.current(s, external_id)}
            assert current == lifecycle.replay(history)
        assert audit.verify(s).ok


# ------------------------------------------------------------------------------- good file


def test_good_file_imports_subjects_and_consents(ledger: Engine, tmp_path: Path) -> None:
    report = importer.import_file(ledger, write(tmp_path, GOOD))
    assert report.errors == []
    assert (report.rows, report.subjects_created, report.consents_created, report.unchanged) == (
        6,
        5,
        5,
        0,
    )
    got = consents(ledger)
    assert {k: (c.state, c.purpose_version) for k, c in got.items()} == {
        ("alice", "news"): ("given", 1),
        ("alice", "offers"): ("withdrawn", 1),
        ("carol", "news"): ("expired", 1),
        ("dave", "news"): ("refused", 1),
        ("erin", "offers"): ("requested", 1),
    }
    alice = got["alice", "news"]
    assert alice.given_at == utc(2026, 1, 1)
    assert alice.valid_until == utc(2026, 1, 1) + timedelta(days=365)  # from the notice
    carol = got["carol", "news"]
    assert (carol.given_at, carol.valid_until) == (utc(2024, 1, 1), utc(2024, 6, 1))
    assert (got["alice", "offers"].given_at, got["alice", "offers"].valid_until) == (None, None)
    with Session(ledger) as s:
        people = {x.external_id: x for x in s.exec(select(Subject)).all()}
        events = s.exec(select(ConsentEvent)).all()
        entries = s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
        assert access.check(s, "alice", "news", "crm").allowed
    assert (people["bob"].email, people["bob"].locale) == (None, "fr")
    assert (people["alice"].email, people["alice"].locale) == ("alice@example.com", "en")
    # No locale in the file: none is stored (the person's browser decides), not "en".
    assert (people["carol"].email, people["carol"].locale) == ("carol@example.com", None)
    assert people["alice"].last_seq == 2
    assert {(e.action, e.actor_type, e.channel, e.actor, e.run_id) for e in events} == {
        ("import", "import", "import", "import:consents.csv", report.import_id)
    }
    withdrawn = next(e for e in events if e.state == "withdrawn")
    assert withdrawn.occurred_at == utc(2025, 6, 1)
    requested = next(e for e in events if e.state == "requested")
    assert requested.occurred_at == utc(2025, 2, 3, 2, 5, 6)
    actions = [e.action for e in entries]
    assert actions.count("consent.import") == 5
    assert actions.count("subject.created") == 5
    assert actions[-1] == "import.run"
    assert entries[-1].detail["consents_created"] == 5
    assert entries[-1].detail["propagate"] is False
    assert counts(ledger)["delivery"] == 0  # withdrawn and expired, but not propagated
    assert_ledger_consistent(ledger)


def test_import_audit_records_subject_before_its_consents(ledger: Engine, tmp_path: Path) -> None:
    """As with single changes (``subject add`` then ``consent grant``), a subject's creation
    must come before its consents in the chain; an auditor reads it in order."""
    importer.import_file(ledger, write(tmp_path, GOOD))
    with Session(ledger) as s:
        entries = s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
    created = {e.subject_ref: e.seq for e in entries if e.action == "subject.created"}
    for e in entries:
        if e.action == "consent.import":
            assert created[e.subject_ref] < e.seq, f"consent.import #{e.seq} precedes its subject"


def test_propagate_enqueues_imported_withdrawals(ledger: Engine, tmp_path: Path) -> None:
    report = importer.import_file(ledger, write(tmp_path, GOOD), propagate=True)
    with Session(ledger) as s:
        rows = s.exec(select(Delivery, ConsentEvent).join(ConsentEvent)).all()
    assert sorted((d.event_type, e.state) for d, e in rows) == [
        ("consent.expired", "expired"),
        ("consent.withdrawn", "withdrawn"),
    ]
    for d, e in rows:
        body = json.loads(d.payload)
        assert body["data"]["event_id"] == str(e.id)
        assert "@" not in d.payload
    assert report.consents_created == 5


def test_cli_import_with_and_without_propagate(cli: Any, ledger: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    r = cli("subject", "import", str(path))
    assert r.code == 0, r.err
    assert r.out.strip() == (
        "6 rows: 5 subjects created, 5 consents imported, 0 already present, 0 bad rows skipped"
    )
    assert counts(ledger)["delivery"] == 0
    other = write(tmp_path, HEADER + "zed,,,offers,withdrawn,2025-01-01,\n", "more.csv")
    r = cli("subject", "import", str(other), "--propagate", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert (data["subjects_created"], data["consents_created"], data["bad_rows"]) == (1, 1, [])
    assert counts(ledger)["delivery"] == 1


def test_small_batches_give_the_same_ledger(ledger: Engine, tmp_path: Path) -> None:
    report = importer.import_file(ledger, write(tmp_path, GOOD), batch_size=1)
    assert (report.subjects_created, report.consents_created) == (5, 5)
    assert len(consents(ledger)) == 5
    assert_ledger_consistent(ledger)


def test_byte_order_mark_is_accepted(ledger: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert importer.import_file(ledger, path).consents_created == 5


# ------------------------------------------------------------------------------ idempotence


def test_rerun_is_a_no_op(ledger: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    importer.import_file(ledger, path, propagate=True)
    before = counts(ledger)
    state = {k: (c.state, c.last_event_id, c.updated_at) for k, c in consents(ledger).items()}
    again = importer.import_file(ledger, path, propagate=True)
    assert (again.subjects_created, again.consents_created, again.unchanged) == (0, 0, 5)
    after = counts(ledger)
    # the only new row is the audit entry recording the (empty) run
    assert after == before | {"audit_entry": before["audit_entry"] + 1}
    with Session(ledger) as s:
        last = s.exec(select(AuditEntry).order_by(col(AuditEntry.seq).desc())).first()
    assert last is not None and last.action == "import.run"
    assert {k: (c.state, c.last_event_id, c.updated_at) for k, c in consents(ledger).items()} == (
        state
    )
    assert_ledger_consistent(ledger)


def test_rerun_leaves_later_changes_alone(ledger: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    importer.import_file(ledger, path)
    with db.session_scope(ledger) as s:
        lifecycle.revoke(s, "alice", "news", lifecycle.Actor())
    again = importer.import_file(ledger, path)
    assert again.consents_created == 0
    assert consents(ledger)["alice", "news"].state == "withdrawn"


def test_interrupted_import_is_finished_by_running_it_again(ledger: Engine, tmp_path: Path) -> None:
    lines = GOOD.splitlines(keepends=True)
    # the first three rows made it in before the interruption
    importer.import_file(ledger, write(tmp_path, "".join(lines[:4]), "consents.csv"))
    report = importer.import_file(ledger, write(tmp_path, GOOD, "consents.csv"))
    assert (report.subjects_created, report.consents_created, report.unchanged) == (3, 3, 2)
    assert len(consents(ledger)) == 5
    assert_ledger_consistent(ledger)


# -------------------------------------------------------------------------------- bad files


def test_bad_rows_import_nothing_and_are_all_listed(ledger: Engine, tmp_path: Path) -> None:
    before = counts(ledger)
    report = importer.import_file(ledger, bad_file(tmp_path))
    found = {e.line: e.message for e in report.errors}
    expected = {line: phrase for line, (_, phrase) in BAD_ROWS.items() if phrase}
    assert set(found) == set(expected)
    for line, phrase in expected.items():
        assert phrase in found[line], (line, found[line])
    assert report.rows == len(BAD_ROWS)
    assert (report.subjects_created, report.consents_created) == (0, 0)
    assert counts(ledger) == before


def test_addresses_are_refused_by_line_and_stored_normalised(
    ledger: Engine, tmp_path: Path
) -> None:
    before = counts(ledger)
    bad = importer.import_file(ledger, write(tmp_path, HEADER + 'x,"a,b@example.test",,,,,\n'))
    [error] = bad.errors
    assert error.line == 2 and error.message.startswith("bad email address: ")
    assert "a,b@" not in error.message  # errors never repeat an address
    assert counts(ledger) == before
    # Normalised as email-validator does it (domain lowercased, NFC), so the same address
    # written two ways is one profile, and an internationalised address is kept.
    rows = [
        "ann,Ann@EXAMPLE.com,,,,,",
        "ann,Ann@example.com,,,,,",
        "jo,jose\u0301@Bu\u0308cher.example,,,,,",
    ]
    good = HEADER + "".join(row + "\n" for row in rows)
    report = importer.import_file(ledger, write(tmp_path, good, "good.csv"))
    assert report.errors == [] and report.subjects_created == 2
    with Session(ledger) as s:
        stored = dict(s.exec(select(Subject.external_id, Subject.email)).all())
    assert stored == {"ann": "Ann@example.com", "jo": "jos\u00e9@b\u00fccher.example"}


def test_cli_bad_rows_exit_2_and_list_every_line(cli: Any, ledger: Engine, tmp_path: Path) -> None:
    path = bad_file(tmp_path)
    before = counts(ledger)
    r = cli("subject", "import", str(path))
    assert r.code == 2
    assert "Traceback" not in r.err and r.out == ""
    lines = r.err.strip().splitlines()
    bad = sorted(line for line, (_, phrase) in BAD_ROWS.items() if phrase)
    assert [x.split(":")[1] for x in lines[:-1]] == [str(n) for n in bad]
    assert all(x.startswith(f"{path}:") for x in lines[:-1])
    assert lines[-1].startswith(f"consentflow: {len(bad)} bad row(s), nothing imported")
    assert counts(ledger) == before


def test_cli_skip_bad_imports_the_good_rows(cli: Any, ledger: Engine, tmp_path: Path) -> None:
    path = bad_file(tmp_path)
    r = cli("subject", "import", str(path), "--skip-bad")
    assert r.code == 0, r.err
    bad = [line for line, (_, phrase) in BAD_ROWS.items() if phrase]
    skipped = [x for x in r.err.splitlines() if ": skipped: " in x]
    assert len(skipped) == len(bad)
    assert f"0 already present, {len(bad)} bad rows skipped" in r.out
    assert {k: c.state for k, c in consents(ledger).items()} == {
        ("alice", "news"): "given",
        ("gina", "offers"): "given",
    }
    with Session(ledger) as s:
        stored = dict(s.exec(select(Subject.external_id, Subject.locale)).all())
    assert stored == {"alice": "en", "gina": None, "quinn": "pt-BR"}
    r = cli("subject", "import", str(path), "--skip-bad", "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert sorted(b["line"] for b in data["bad_rows"]) == sorted(bad)
    assert (data["consents_created"], data["unchanged"]) == (0, 2)
    assert_ledger_consistent(ledger)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("caf\xe9,\n".encode("latin-1"), "is not UTF-8 text"),
        (HEADER.encode() + "z\xe9,,,,,,\n".encode("latin-1"), "is not UTF-8 text"),
        (b"alice,alice@example.com,en,news,given,,\n", "the header must name external_id"),
        (b"", "the header must name external_id"),
        (b"external_id,colour\nalice,red\n", "unknown column(s) colour"),
    ],
    ids=["latin1-header", "latin1-row", "no-header", "empty", "unknown-column"],
)
def test_cli_unreadable_file_is_one_line(
    cli: Any, ledger: Engine, tmp_path: Path, content: bytes, phrase: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    before = counts(ledger)
    r = cli("subject", "import", str(path))
    assert r.code == 2
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1
    assert r.err.startswith("consentflow: ") and phrase in r.err
    assert counts(ledger) == before


def test_cli_missing_file(cli: Any, ledger: Engine, tmp_path: Path) -> None:
    r = cli("subject", "import", str(tmp_path / "nope.csv"))
    assert r.code == 2
    assert r.err.strip() == f"consentflow: no such file: {tmp_path / 'nope.csv'}"


# ----------------------------------------------------------------------------------- scale


def test_rows_across_several_batches(ledger: Engine, tmp_path: Path) -> None:
    """11,000 rows: more than two of the import's 5,000-row batches (the scale is the
    benchmark's job)."""
    n_subjects = 5_500
    rows = 2 * n_subjects
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write(HEADER)
        for i in range(n_subjects):
            fh.write(
                f"user{i:05d},user{i:05d}@example.com,en,news,given,2026-{i % 9 + 1:02d}-01,\n"
            )
            fh.write(f"user{i:05d},user{i:05d}@example.com,en,offers,withdrawn,2025-01-01,\n")
    report = importer.import_file(ledger, path)
    assert report.errors == []
    assert (report.rows, report.subjects_created, report.consents_created) == (
        rows,
        n_subjects,
        rows,
    )
    c = counts(ledger)
    assert (c["subject"], c["consent"], c["consent_event"], c["delivery"]) == (
        n_subjects,
        rows,
        rows,
        0,
    )
    # 2 purposes + 1 system + the subjects + the consents + the run
    assert c["audit_entry"] == 3 + n_subjects + rows + 1
    with Session(ledger) as s:
        assert audit.verify(s).ok
        by_state = dict(
            s.exec(select(Consent.state, func.count()).group_by(col(Consent.state))).all()
        )
        seqs = set(s.exec(select(Subject.last_seq)).all())
        assert access.check(s, f"user{n_subjects - 1:05d}", "news", "crm").allowed
        assert access.check(s, "user00000", "offers", "crm").reason == "withdrawn"
    assert by_state == {"given": n_subjects, "withdrawn": n_subjects}
    assert seqs == {2}
    again = importer.import_file(ledger, path)
    assert (again.subjects_created, again.consents_created, again.unchanged) == (0, 0, rows)


# ------------------------------------------------------- what the database would refuse (14.2)

#: Issue 14, defect 2: each of these passed validation and failed mid-import (PostgreSQL refuses
#: NUL; every database refuses the identifier rule now) after earlier batches had committed.
REFUSED: list[tuple[str, str]] = [
    ("nul\x00id,,,news,given,2026-01-01,", "external_id contains the control character '\\x00'"),
    ("tab,,,news\x01,given,,", "purpose contains the control character '\\x01'"),
    ("longloc,,en-" + "-".join(["abcdefgh"] * 4) + ",,,,", "bad locale"),
    ("longmail," + "a" * 300 + "@example.com,,,,,", "bad email address"),
    ("a/b,,,news,given,,", "bad external id: '/' is not allowed"),
    ("ann@example.com,,,,,,", "an email address cannot be an id"),
    ("x" * 201 + ",,,,,,", "bad external id: use 1 to 200"),
]


def _refused_file(tmp_path: Path) -> tuple[Path, dict[int, str], int]:
    """Good rows around the refused ones; one good record spans two physical lines (a quoted
    field with a line break), so every later row's line differs from its record number."""
    lines = [HEADER.rstrip("\n")]
    lines += [f"s{i},,,news,given,2026-01-01," for i in range(5)]
    lines += ['"spread\n",,,news,refused,,']  # two physical lines, one record
    expected: dict[int, str] = {}
    for row, phrase in REFUSED:
        expected[sum(part.count("\n") + 1 for part in lines) + 1] = phrase
        lines.append(row)
        lines.append(f"after{len(expected)},,,news,given,,")
    path = tmp_path / "refused.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, expected, 6 + len(REFUSED)


def test_a_file_the_database_would_refuse_commits_nothing_and_names_each_line(
    cli: Any, ledger: Engine, tmp_path: Path
) -> None:
    path, expected, good = _refused_file(tmp_path)
    before = counts(ledger)
    r = cli("subject", "import", str(path), "--batch-size", "2")
    assert r.code == 2 and "Traceback" not in r.err, r.err
    named = {int(line.split(":")[1]): line for line in r.err.splitlines()[:-1]}
    assert sorted(named) == sorted(expected), r.err
    for line, phrase in expected.items():
        assert phrase in named[line], (line, named[line])
    assert counts(ledger) == before  # not one batch, not even the run's audit entry

    r = cli("subject", "import", str(path), "--batch-size", "2", "--skip-bad", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert (data["subjects_created"], data["consents_created"]) == (good, good)
    assert sorted(b["line"] for b in data["bad_rows"]) == sorted(expected)
    with Session(ledger) as s:
        assert subjects_named(s) >= {"s0", "spread", "after1", f"after{len(REFUSED)}"}
        [run] = s.exec(
            select(AuditEntry)
            .where(AuditEntry.action == "import.run")
            .order_by(col(AuditEntry.seq))
        ).all()
        assert run.detail["bad_rows"] == len(REFUSED) and "interrupted" not in run.detail
        assert audit.verify(s).ok


def subjects_named(s: Session) -> set[str]:
    return set(s.exec(select(Subject.external_id)).all())


def _refuse_subject_inserts_named(engine: Engine, name: str) -> None:
    """A real fault: the database itself refuses one subject (a trigger), as it would a value
    that got past validation, or a connection lost halfway."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON subject "
                    f"WHEN NEW.external_id = '{name}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
                )
            )
            return
        conn.execute(
            text(
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.external_id = '{name}' THEN "
                "RAISE EXCEPTION 'refused by the test trigger'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON subject "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )
        )


def test_an_import_stopped_halfway_leaves_its_run_entry_and_finishes_on_a_rerun(
    cli: Any, ledger: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path, HEADER + "".join(f"p{i},,,news,given,,\n" for i in range(5)))
    _refuse_subject_inserts_named(ledger, "p3")
    r = cli("subject", "import", str(path), "--batch-size", "2")
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.splitlines()) == 1, r.err
    assert "refused by the test trigger" in r.err
    with Session(ledger) as s:
        assert subjects_named(s) == {"p0", "p1"}  # the first batch committed
        [run] = s.exec(
            select(AuditEntry)
            .where(AuditEntry.action == "import.run")
            .order_by(col(AuditEntry.seq))
        ).all()
        assert run.detail["interrupted"] and run.detail["subjects_created"] == 2
        assert audit.verify(s).ok
    with ledger.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_one" + ("" if _sqlite(ledger) else " ON subject")))
    r = cli("subject", "import", str(path), "--json")
    assert r.code == 0, r.err
    assert (json.loads(r.out)["subjects_created"], json.loads(r.out)["unchanged"]) == (3, 2)


def _sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@pytest.mark.parametrize(
    ("body", "line", "phrase"),
    [
        ('a,,,news,given,,\nb,,,news,given,,\n"c"x,,,,,,\n', 4, "',' expected after '\"'"),
        ('a,,,news,given,,\n"b\n\nc",,,,,,\nd,"open,,,,,\n', 6, "unexpected end of data"),
        ('a,,,news,given,,\n"b\n\nc",,,,,,\n"d\nx,,,,,,\n', 7, "starts on line 6"),
    ],
    ids=["bad-quote", "unclosed-at-the-end", "unclosed-spanning"],
)
def test_a_malformed_csv_names_the_line_it_breaks_on(
    cli: Any, ledger: Engine, tmp_path: Path, body: str, line: int, phrase: str
) -> None:
    """Issue 14, defect 10: CSV parse errors pointed at line 1 (or the line before)."""
    path = write(tmp_path, HEADER + body)
    before = counts(ledger)
    r = cli("subject", "import", str(path))
    assert r.code == 2 and len(r.err.splitlines()) == 1, r.err
    assert r.err.startswith(f"consentflow: {path}:{line}: malformed CSV") and phrase in r.err
    assert counts(ledger) == before


def test_a_line_that_is_not_utf8_is_named(cli: Any, ledger: Engine, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    rows = "".join(f"u{i},,,news,given,,\r\n" for i in range(3000)).encode()  # past one chunk
    path.write_bytes(HEADER.encode() + rows + "z\xe9,,,,,,\n".encode("latin-1"))
    r = cli("subject", "import", str(path))
    assert r.code == 2 and r.err.strip() == f"consentflow: {path}:3002: this line is not UTF-8 text"


# ------------------------------------------------------------------- the fast paths (issue 11)

#: Each judged by the import's shortcut exactly as by ``subjects.check_email``: stored the same
#: way, or refused with the same line.
ADDRESSES = [
    "ann@example.com",
    "Ann.Lee+news@EXAMPLE.Com",
    "o'brien@sub.example.co.uk",
    "x@xn--bcher-kva.example",  # an IDNA domain: stored in Unicode
    "Postmaster@example.com",  # a mailbox name email-validator lowercases
    "INFO@example.com",
    "a@b.test",  # special-use domains
    "a@localhost",
    "a@example.invalid",
    "a@example",  # no dot
    "a@-bad.example",
    "a@bad-.example",
    "a@example.123",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@example..com",
    "l" * 64 + "@example.com",
    "l" * 65 + "@example.com",
    "l" * 240 + "@example.com",  # over 254 in all
    "l" * 200 + "@" + "d" * 50 + ".example.com",
    "jose\u0301@example.com",  # not the shortcut's: the whole way through
]


def _judged(check: Any, value: str) -> tuple[str, str | None]:
    try:
        return ("stored", check(value))
    except InvalidInput as exc:
        return ("refused", str(exc))


def test_the_address_shortcut_judges_as_check_email() -> None:
    rules = importer._Rules(set(), utc(2026, 1, 1))
    for value in ADDRESSES * 2:  # the second time from the remembered domains
        assert _judged(rules.email, value) == _judged(subjects.check_email, value), value


@settings(max_examples=100, deadline=None)
@given(st.from_regex(importer._PLAIN_ADDRESS, fullmatch=True))
def test_the_address_shortcut_agrees_on_any_plain_address(value: str) -> None:
    rules = importer._Rules(set(), utc(2026, 1, 1))
    assert _judged(rules.email, value) == _judged(subjects.check_email, value)


def test_references_are_the_keyed_hash_of_keys() -> None:
    secret = b"k" * 32
    reference = _batch.referencer(secret)
    for ext in ["alice", "user00000001", "a.b:c+d-e_f", "x" * 200]:
        assert reference(ext) == keys.subject_ref(secret, ext)


def test_an_erased_person_imported_again_is_a_new_registration(
    ledger: Engine, tmp_path: Path
) -> None:
    """As ``subject add`` does: the next generation, with a reference of its own."""
    path = write(tmp_path, HEADER + "alice,,,news,given,2026-01-01,\n")
    importer.import_file(ledger, path)
    with db.session_scope(ledger) as s:
        erasure.erase(s, "alice", lifecycle.Actor(), reason="ticket 1")
    report = importer.import_file(ledger, path)
    assert (report.subjects_created, report.consents_created) == (1, 1)
    with Session(ledger) as s:
        secret = keys.reference_key(s)
        again = s.exec(select(Subject).where(Subject.external_id == "alice")).one()
        created = s.exec(
            select(AuditEntry)
            .where(AuditEntry.subject_ref == again.subject_ref)
            .order_by(col(AuditEntry.seq))
        ).all()
    assert again.generation == 2
    assert again.subject_ref == subjects.reference(secret, "alice", 2)
    assert [e.detail.get("generation") for e in created if e.action == "subject.created"] == [2]
    assert_ledger_consistent(ledger)


def test_copy_writes_what_the_statement_writes(ledger: Engine) -> None:
    """``Writer.insert`` takes ``COPY`` on PostgreSQL from ``COPY_ROWS`` rows on: the rows it
    stores are the ones the many-row ``INSERT`` stores, awkward text and JSON included."""
    with db.session_scope(ledger) as s:
        subject = subjects.add(s, "copy")
        purpose = purposes.info(s, ["news"])["news"]
    when = utc(2026, 1, 2, 3, 4, 5)
    text_ = "tab\there, back\\slash, new\nline, quote \"'; é €"
    evidence = orjson.dumps({"ip": "192.0.2.1", "note": text_}).decode()

    def rows(w: db.Writer, first: int, n: int) -> list[tuple[Any, ...]]:
        return [
            (w.uuid(uuid.uuid4()), subject.id, purpose.id, seq, "import", "given", None, 1,
             w.ts(when), w.ts(when), None, "import", text_, "import", None, evidence, "r")
            for seq in range(first, first + n)
        ]  # fmt: skip

    columns = [c.name for c in _write._EVENT_COLUMNS]
    with db.session_scope(ledger) as s:
        w = db.Writer(s)
        w.insert("consent_event", _write._EVENT_COLUMNS, rows(w, 1, db.COPY_ROWS))  # COPY
        w.insert("consent_event", _write._EVENT_COLUMNS, rows(w, db.COPY_ROWS + 1, 3))
    with Session(ledger) as s:
        stored = s.exec(select(ConsentEvent).order_by(col(ConsentEvent.seq))).all()
    assert len(stored) == db.COPY_ROWS + 3
    kept = [n for n in columns if n not in ("id", "seq")]
    by_copy, by_insert = stored[0], stored[-1]
    assert {n: getattr(by_copy, n) for n in kept} == {n: getattr(by_insert, n) for n in kept}
    assert (by_insert.actor, by_insert.evidence) == (text_, orjson.loads(evidence))
    assert by_insert.occurred_at == when


def test_a_conflict_on_the_last_line_of_many_refuses_the_whole_file(
    ledger: Engine, tmp_path: Path
) -> None:
    """Conflicts are found across the whole file (the scratch table), past the first chunk."""
    rows = "".join(f"u{i},,,news,given,2026-01-01,\n" for i in range(6000))
    path = write(tmp_path, HEADER + rows + "u17,,fr,,,,\n")
    before = counts(ledger)
    report = importer.import_file(ledger, path)
    assert [(e.line, e.message) for e in report.errors] == [
        (6002, "email or locale differs from line 19 for the same subject")
    ]
    assert counts(ledger) == before

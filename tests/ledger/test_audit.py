"""The hash-chained audit trail: tamper detection, anchors, export, pseudonymity.

Tampering is done the way an attacker with database access would: SQL statements on the
``audit_entry`` and ``audit_head`` tables, bypassing consentflow entirely.
"""

from __future__ import annotations

import io
import itertools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import (
    audit,
    db,
    importer,
    integrity,
    keys,
    lifecycle,
    purposes,
    subjects,
    systems,
)
from consentflow.errors import InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import Action, AuditEntry, AuditHead, Consent, ConsentEvent, Subject

T = AuditEntry.__table__
H = AuditHead.__table__
EMAIL = "alice.private@example.com"


def run_sql(engine: Engine, *statements: Any) -> None:
    with engine.begin() as conn:
        for stmt in statements:
            conn.execute(stmt)


def verify(engine: Engine, **kwargs: Any) -> audit.Verification:
    with Session(engine) as s:
        return audit.verify(s, **kwargs)


def entries(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all())


def ref(engine: Engine, external_id: str) -> str:
    with Session(engine) as s:
        return s.exec(select(Subject.subject_ref).where(Subject.external_id == external_id)).one()


@pytest.fixture
def chain(engine: Engine) -> Engine:
    """Ten or so entries: purposes, subjects, a system and a few consent changes."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.add(s, "offers", title="Offers", validity_days=365)
        subjects.add(s, "alice", email=EMAIL)
        subjects.add(s, "bob", email="bob@example.com")
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
    for action in (lifecycle.grant, lifecycle.revoke):
        with db.session_scope(engine) as s:
            action(s, "alice", "news", Actor())
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "bob", "news", Actor())
        lifecycle.grant(s, "alice", "offers", Actor())
    with db.session_scope(engine) as s:
        lifecycle.refuse(s, "bob", "offers", Actor())
    result = verify(engine)
    assert result.ok and result.entries == result.head_seq == 10
    return engine


@pytest.mark.parametrize("chunk", [1, 3, 5000])
def test_intact_chain_verifies(chain: Engine, chunk: int) -> None:
    result = verify(chain, chunk=chunk)
    rows = entries(chain)
    assert result.ok and result.first_bad is None and result.problem is None
    assert (result.entries, result.head_seq, result.head_hash) == (10, 10, rows[-1].hash)
    assert rows[0].prev_hash == audit.GENESIS
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash


# ------------------------------------------------------------------------------- tampering


def _modify_detail(engine: Engine) -> int:
    row = entries(engine)[6]  # seq 7: alice's revocation
    detail = dict(row.detail, to="given")
    run_sql(engine, update(T).where(T.c.seq == 7).values(detail=detail))
    return 7


def _modify_action(engine: Engine) -> int:
    run_sql(engine, text("UPDATE audit_entry SET action = 'consent.renew' WHERE seq = 6"))
    return 6


def _modify_subject_ref(engine: Engine) -> int:
    run_sql(engine, update(T).where(T.c.seq == 8).values(subject_ref=ref(engine, "alice")))
    return 8


def _modify_recorded_at(engine: Engine) -> int:
    row = entries(engine)[3]
    moved = row.recorded_at.replace(microsecond=(row.recorded_at.microsecond + 1) % 1_000_000)
    run_sql(engine, update(T).where(T.c.seq == 4).values(recorded_at=moved))
    return 4


def _delete_middle(engine: Engine) -> int:
    run_sql(engine, delete(T).where(T.c.seq == 5))
    return 5


def _delete_first(engine: Engine) -> int:
    run_sql(engine, delete(T).where(T.c.seq == 1))
    return 1


def _delete_last(engine: Engine) -> int:
    run_sql(engine, delete(T).where(T.c.seq == 10))
    return 10


def _swap(engine: Engine) -> int:
    run_sql(
        engine,
        update(T).where(T.c.seq == 6).values(seq=-6),
        update(T).where(T.c.seq == 7).values(seq=6),
        update(T).where(T.c.seq == -6).values(seq=7),
    )
    return 6


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in (*audit._FIELDS, "prev_hash", "hash")}


def _insert_forged_middle(engine: Engine) -> int:
    """Shift 4..10 up by one and slip a copy of entry 3 (with its own hashes) in at 4."""
    rows = entries(engine)
    shifted = [update(T).where(T.c.seq == seq).values(seq=seq + 1) for seq in range(10, 3, -1)]
    forged = _row(rows[2]) | {"seq": 4, "action": "consent.grant"}
    run_sql(engine, *shifted, insert(T).values(forged))
    return 4


def _insert_forged_tail(engine: Engine) -> int:
    """Append an entry that is correctly chained onto 10, without touching the head."""
    last = entries(engine)[-1]
    forged = _row(last) | {"seq": 11, "action": "consent.grant", "prev_hash": last.hash}
    forged["hash"] = audit.digest(last.hash, forged)
    run_sql(engine, insert(T).values(forged))
    return 11


TAMPERS = {
    "modify-detail": _modify_detail,
    "modify-action": _modify_action,
    "modify-subject_ref": _modify_subject_ref,
    "modify-recorded_at": _modify_recorded_at,
    "delete-first": _delete_first,
    "delete-middle": _delete_middle,
    "delete-last": _delete_last,
    "swap": _swap,
    "insert-middle": _insert_forged_middle,
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampering_is_detected_at_the_first_bad_entry(chain: Engine, tamper: str) -> None:
    first_bad = TAMPERS[tamper](chain)
    for chunk in (2, 5000):
        result = verify(chain, chunk=chunk)
        assert not result.ok
        assert result.first_bad == first_bad, result
        assert result.problem


def test_forged_entry_appended_after_the_head_is_named(chain: Engine) -> None:
    """An extra, correctly chained entry past the head is an insertion at seq 11; verify must
    name entry 11 (not a non-existent entry 12) and must not call it a deletion."""
    first_bad = _insert_forged_tail(chain)
    result = verify(chain)
    assert not result.ok
    assert result.first_bad == first_bad, result
    assert "deleted" not in (result.problem or "")


def test_each_tamper_reported_by_cli_as_one_line(chain: Engine, cli: Any) -> None:
    _swap(chain)
    r = cli("audit", "verify")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err
    assert lines[0].startswith("consentflow: audit trail broken at entry 6")
    r = cli("audit", "verify", "--json")
    assert r.code == 1
    data = json.loads(r.out)
    assert (data["ok"], data["first_bad"]) == (False, 6)
    assert r.err.strip().startswith("consentflow: audit trail broken at entry 6")


def test_cli_verify_prints_the_head_and_accepts_it_as_anchor(chain: Engine, cli: Any) -> None:
    r = cli("audit", "verify")
    assert r.code == 0, r.err
    last = entries(chain)[-1]
    assert f"10 entries, head 10:{last.hash}" in r.out
    r = cli("audit", "verify", "--json")
    data = json.loads(r.out)
    assert data == {
        "ok": True,
        "entries": 10,
        "head": f"10:{last.hash}",
        "first_bad": None,
        "problem": None,
        "history_ok": True,
        "history_problem": None,
        "findings": [],
    }
    assert cli("audit", "verify", "--expect", data["head"]).code == 0
    assert cli("audit", "verify", "--expect", f"3:{entries(chain)[2].hash}").code == 0
    r = cli("audit", "verify", "--expect", f"3:{'0' * 64}")
    assert r.code == 1 and "entry 3" in r.err


@pytest.mark.parametrize("bad", ["10", "x:abc", "10:short", ":" + "0" * 64])
def test_cli_verify_rejects_malformed_anchor(chain: Engine, cli: Any, bad: str) -> None:
    r = cli("audit", "verify", "--expect", bad)
    assert r.code == 2
    assert r.err.strip().splitlines() == [r.err.strip()]
    assert r.err.startswith("consentflow: bad --expect")


def test_anchor_catches_a_cut_off_tail_with_a_rewritten_head(chain: Engine) -> None:
    anchor = (10, entries(chain)[-1].hash)
    eighth = entries(chain)[7]
    run_sql(
        chain,
        delete(T).where(T.c.seq > 8),
        update(H).where(H.c.id == 1).values(seq=8, hash=eighth.hash),
    )
    assert verify(chain).ok  # undetectable without an anchor, by construction
    result = verify(chain, expect=anchor)
    assert not result.ok and result.first_bad == 10
    assert verify(chain, expect=(8, eighth.hash)).ok


def test_anchor_catches_a_rewritten_tail(chain: Engine) -> None:
    rows = entries(chain)
    anchor = (10, rows[-1].hash)
    forged = _row(rows[-1]) | {"action": "consent.grant"}
    forged["hash"] = audit.digest(rows[8].hash, forged)
    run_sql(
        chain,
        update(T).where(T.c.seq == 10).values(action="consent.grant", hash=forged["hash"]),
        update(H).where(H.c.id == 1).values(hash=forged["hash"]),
    )
    assert verify(chain).ok
    result = verify(chain, expect=anchor)
    assert not result.ok and result.first_bad == 10


def test_cli_anchor_detects_cut_off_tail(chain: Engine, cli: Any) -> None:
    head = json.loads(cli("audit", "verify", "--json").out)["head"]
    ninth = entries(chain)[8]
    run_sql(
        chain,
        delete(T).where(T.c.seq == 10),
        update(H).where(H.c.id == 1).values(seq=9, hash=ninth.hash),
    )
    assert verify(chain).ok  # the chain alone cannot tell a cut-off tail from a short one ...
    r = cli("audit", "verify")  # ... but the cut-off entry was a consent change: the history can
    assert r.code == 1 and "has no audit entry" in r.err
    r = cli("audit", "verify", "--expect", head)
    assert r.code == 1
    assert r.err.strip().splitlines() == [r.err.strip()]
    assert "entry 10" in r.err


def test_a_deleted_head_row_is_reported_not_raised(chain: Engine) -> None:
    run_sql(chain, delete(H))
    result = verify(chain)
    assert not result.ok and result.entries == 10
    assert result.problem and "audit_head" in result.problem


def test_consent_entries_chain_the_evidence_as_a_keyed_hash(engine: Engine) -> None:
    """Format 2: ``v`` and the evidence's keyed hash (never the evidence itself) are chained."""
    evidence = {"ip": "203.0.113.9", "user_agent": "curl/8"}
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        subjects.add(s, "alice")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor(evidence=evidence))
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
    grant, revoke = entries(engine)[-2:]
    assert grant.detail["v"] == revoke.detail["v"] == audit.CONSENT_FORMAT == 2
    assert revoke.detail["evidence"] is None
    with Session(engine) as s:
        secret = keys.instance_secret(s)
    assert grant.detail["evidence"] == audit.evidence_digest(
        secret, dict(reversed(evidence.items()))
    )
    assert "203.0.113.9" not in json.dumps([_row(e) for e in entries(engine)], default=str)
    assert verify(engine).ok and history_check(engine) == (True, None)


def test_format_1_consent_entries_still_verify(chain: Engine) -> None:
    """Entries written before format 2 (no ``v``, no evidence hash) verify as they always did."""
    with Session(chain) as s:
        rows = list(s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all())
    prev, statements = audit.GENESIS, []
    for entry in rows:
        row = _row(entry)
        row["detail"] = {k: v for k, v in entry.detail.items() if k not in ("v", "evidence")}
        row["hash"] = audit.digest(prev, row)
        statements.append(
            update(T)
            .where(T.c.seq == entry.seq)
            .values(detail=row["detail"], prev_hash=prev, hash=row["hash"])
        )
        prev = row["hash"]
    run_sql(chain, *statements, update(H).values(hash=prev))
    assert verify(chain).ok and history_check(chain) == (True, None)
    with db.session_scope(chain) as s:  # a format 2 entry after format 1 ones is fine ...
        lifecycle.grant(s, "bob", "offers", Actor())
    assert history_check(chain) == (True, None)


def test_appends_after_a_failed_transaction_keep_the_chain(chain: Engine) -> None:
    with pytest.raises(RuntimeError), db.session_scope(chain) as s:
        lifecycle.grant(s, "bob", "offers", Actor())
        raise RuntimeError
    with db.session_scope(chain) as s:
        lifecycle.grant(s, "bob", "offers", Actor())
    result = verify(chain)
    assert result.ok and result.entries == 11


# ---------------------------------------------------------------------------------- export


def export(engine: Engine, **kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    with Session(engine) as s:
        n = audit.export(s, out, **kwargs)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == n
    return lines


def rechain(lines: list[dict[str, Any]]) -> None:
    """Re-check exported entries with nothing but their own fields."""
    for line in lines:
        row = dict(line)
        row["recorded_at"] = datetime.strptime(row["recorded_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        )
        assert audit.digest(line["prev_hash"], row) == line["hash"]


def test_export_everything_in_chain_order(chain: Engine) -> None:
    lines = export(chain)
    assert [line["seq"] for line in lines] == list(range(1, 11))
    rechain(lines)
    for before, after in itertools.pairwise(lines):
        assert after["prev_hash"] == before["hash"]


def test_export_by_subject(chain: Engine, cli: Any) -> None:
    alice = ref(chain, "alice")
    lines = export(chain, subject_ref=alice)
    assert [line["action"] for line in lines] == [
        "subject.created",
        "consent.grant",
        "consent.revoke",
        "consent.grant",
    ]
    assert {line["subject_ref"] for line in lines} == {alice}
    rechain(lines)
    r = cli("audit", "export", "--subject", "alice")
    assert r.code == 0, r.err
    assert [json.loads(x) for x in r.out.splitlines()] == lines


def test_export_by_time_range(engine: Engine, cli: Any, tmp_path: Path) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        subjects.add(s, "alice")
    times = [datetime(2024, m, 10, 12, 0, tzinfo=UTC) for m in (1, 3, 5)]
    for action, when in zip((Action.GRANT, Action.REVOKE, Action.GRANT), times, strict=True):
        with db.session_scope(engine) as s:
            lifecycle._single(s, action, "alice", "news", Actor(), now=when)
    since, until = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)
    assert [x["action"] for x in export(engine, since=since, until=until)] == ["consent.revoke"]
    # since is inclusive, until exclusive
    assert [x["action"] for x in export(engine, since=times[1], until=times[2])] == [
        "consent.revoke"
    ]
    assert [x["action"] for x in export(engine, until=times[1])] == ["consent.grant"]
    assert len(export(engine, since=times[2])) == 3  # the grant and the two creation entries
    r = cli("audit", "export", "--since", "2024-02-01", "--until", "2024-04-01T00:00:00Z")
    assert r.code == 0, r.err
    assert [json.loads(x)["action"] for x in r.out.splitlines()] == ["consent.revoke"]
    out = tmp_path / "audit.jsonl"
    r = cli("audit", "export", "--subject", "alice", "--until", "2024-04-01", "-o", str(out))
    assert r.code == 0 and r.out == ""
    assert "2 entries written" in r.err
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["action"] for x in exported] == ["consent.grant", "consent.revoke"]
    with Session(engine) as s, pytest.raises(InvalidInput):
        audit.export(s, io.StringIO(), since=until, until=since)


@pytest.mark.parametrize(
    "args",
    [
        ("--since", "yesterday"),
        ("--until", "2024-13-01"),
        ("--since", "2024-05-01", "--until", "2024-01-01"),
        ("--subject", "nobody"),
    ],
)
def test_export_usage_errors(chain: Engine, cli: Any, args: tuple[str, ...]) -> None:
    r = cli("audit", "export", *args)
    assert r.code == 2
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("consentflow: ")
    assert "Traceback" not in r.err


def test_audit_never_holds_emails(chain: Engine, cli: Any, tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(
        "external_id,email,locale,purpose,state,given_at,valid_until\n"
        "carol,carol.secret@example.org,fr,news,withdrawn,2025-01-01,\n"
    )
    report = importer.import_file(chain, csv)
    assert not report.errors
    r = cli("audit", "export")
    assert r.code == 0
    for email in (EMAIL, "bob@example.com", "carol.secret@example.org"):
        assert email not in r.out
        assert email.split("@")[0] not in r.out
    with Session(chain) as s:
        dump = json.dumps([_row(e) for e in s.exec(select(AuditEntry))], default=str)
        assert EMAIL not in dump and "carol.secret" not in dump
        refs = set(s.exec(select(Subject.subject_ref)).all())
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert {x["subject_ref"] for x in lines} - {None} == refs
    assert "alice" not in {x["subject_ref"] for x in lines}
    assert all(
        "alice" not in json.dumps(x["detail"]) for x in lines if x["subject_ref"] is not None
    )


# ------------------------------------------------------------- the history against the chain


def history_check(engine: Engine) -> tuple[bool, str | None]:
    with Session(engine) as s:
        return integrity.verify_history(s)


def test_untouched_history_matches_the_chain(chain: Engine) -> None:
    assert history_check(chain) == (True, None)


@pytest.mark.parametrize(
    ("tamper", "word"),
    [
        (lambda: update(ConsentEvent).values(state="given"), "modified"),
        (
            lambda: update(ConsentEvent).values(occurred_at=datetime(2020, 1, 1, tzinfo=UTC)),
            "modified",
        ),
        (lambda: delete(ConsentEvent), "deleted"),
    ],
    ids=["state", "occurred_at", "delete"],
)
def test_an_edited_history_is_caught_even_with_the_chain_intact(
    chain: Engine, cli: Any, tamper: Any, word: str
) -> None:
    with Session(chain) as s:
        last = s.exec(select(ConsentEvent).order_by(col(ConsentEvent.recorded_at).desc())).first()
    assert last is not None
    statement = tamper().where(col(ConsentEvent.id) == last.id)
    if word == "deleted":  # the current state points at its last event: detach it first
        run_sql(chain, update(Consent).values(last_event_id=uuid.uuid4()))
    run_sql(chain, statement)
    assert verify(chain).ok  # the chain itself is untouched ...
    with Session(chain) as s:
        findings = integrity.verify_record(s)
    assert any(word in f for f in findings), findings  # ... but the history no longer matches it
    r = cli("audit", "verify")
    assert r.code == 1 and r.err.startswith("consentflow: consent history does not match")
    assert len(r.err.strip().splitlines()) == len(findings)  # one line per finding


def test_an_event_added_behind_the_ledgers_back_is_caught(chain: Engine) -> None:
    with Session(chain) as s:
        event = s.exec(select(ConsentEvent)).first()
    assert event is not None
    forged = {c: getattr(event, c) for c in ConsentEvent.model_fields}
    forged.update(id=uuid.uuid4(), seq=999)
    run_sql(chain, insert(ConsentEvent).values(**forged))
    ok, problem = history_check(chain)
    assert not ok and "inserted" in (problem or "")

"""``consentflow audit verify`` against edits that change the record behind the ledger's back.

Each edit is made the way an attacker with database access would make it: one SQL statement on
the record's tables, leaving the audit chain itself untouched (so ``audit.verify`` alone passes).
Verify must still name it: the consent's current state against its replayed history, every
chained field of every event, the subjects' external ids against their chained references, the
notice versions against the text hashed into the chain when they were published, the chain's
head row, and an entry that lost a field (one line per finding, exit 1, never a traceback).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, importer, integrity, lifecycle, purposes, subjects
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    AuditEntry,
    AuditHead,
    Channel,
    Consent,
    ConsentEvent,
    Purpose,
    PurposeVersion,
    Subject,
)

EVIDENCE = {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "form": "signup-v2"}
GRANTER = Actor(
    ActorType.AGENT,
    Channel.SUPPORT,
    name="agent-ann",
    reason="asked on the phone",
    run_id="run-1",
    evidence=EVIDENCE,
)


def run_sql(engine: Engine, *statements: Any) -> None:
    with engine.begin() as conn:
        for stmt in statements:
            conn.execute(stmt)


@pytest.fixture
def record(engine: Engine) -> Engine:
    """Two purposes (one revised, with a translation), two subjects; alice granted news with
    evidence through an agent, then withdrew it; bob gave offers."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", description="Weekly news.", validity_days=30)
        purposes.add(
            s,
            "offers",
            title="Offers",
            description="Partner offers.",
            validity_days=365,
            texts={"fr": {"title": "Offres", "description": "Offres partenaires."}},
        )
        purposes.revise(s, "offers", material=False, description="Offers from our partners.")
        subjects.add(s, "alice")
        subjects.add(s, "bob")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", GRANTER)
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor(reason="changed my mind"))
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "bob", "offers", Actor(channel=Channel.WEB, evidence={"ip": "x"}))
    return engine


def _event(engine: Engine, external_id: str, action: str) -> ConsentEvent:
    with Session(engine) as s:
        return s.exec(
            select(ConsentEvent)
            .join(Subject, col(Subject.id) == ConsentEvent.subject_id)
            .where(Subject.external_id == external_id, ConsentEvent.action == action)
        ).one()


def _edit_event(**values: Any) -> Callable[[Engine], None]:
    """Edit alice's grant event (the one with an agent, a reason, evidence and a run id)."""

    def edit(engine: Engine) -> None:
        event = _event(engine, "alice", "grant")
        run_sql(engine, update(ConsentEvent).where(col(ConsentEvent.id) == event.id).values(values))

    return edit


def _later(engine: Engine) -> None:
    event = _event(engine, "alice", "grant")
    run_sql(
        engine,
        update(ConsentEvent)
        .where(col(ConsentEvent.id) == event.id)
        .values(recorded_at=event.recorded_at + timedelta(seconds=1)),
    )


def _state_given(engine: Engine) -> None:
    """The defect as reported: the withdrawn consent's row now says given."""
    run_sql(engine, update(Consent).where(col(Consent.state) == "withdrawn").values(state="given"))


def _external_id(engine: Engine) -> None:
    run_sql(engine, update(Subject).where(Subject.external_id == "bob").values(external_id="eve"))


def _notice(**values: Any) -> Callable[[Engine], None]:
    def edit(engine: Engine) -> None:
        with Session(engine) as s:
            pid = s.exec(select(Purpose.id).where(Purpose.key == "offers")).one()
        run_sql(
            engine,
            update(PurposeVersion).where(PurposeVersion.purpose_id == pid).values(values),
        )

    return edit


EDITS: dict[str, Callable[[Engine], None]] = {
    "consent-state": _state_given,
    "event-actor": _edit_event(actor="agent-bob"),
    "event-actor_type": _edit_event(actor_type="subject"),
    "event-type": _edit_event(action="renew"),
    "event-channel": _edit_event(channel="web"),
    "event-reason": _edit_event(reason="no reason"),
    "event-reason-cleared": _edit_event(reason=None),
    "event-evidence": _edit_event(evidence={**EVIDENCE, "ip": "198.51.100.1"}),
    "event-evidence-removed": _edit_event(evidence=None),
    "event-recorded_at": _later,
    "event-effective_at": _edit_event(occurred_at=datetime(2020, 1, 1, tzinfo=UTC)),
    "event-run_id": _edit_event(run_id="run-2"),
    "event-notice-version": _edit_event(purpose_version=2),
    "subject-external-id": _external_id,
    "purpose-notice-text": _notice(description="Anything we like."),
    "purpose-translation": _notice(texts={"fr": {"title": "Offres", "description": "Tout."}}),
    "purpose-title": _notice(title="Deals"),
}


def verify_cli(cli: Any) -> tuple[int, list[str]]:
    r = cli("audit", "verify")
    assert "Traceback" not in r.err
    return r.code, r.err.strip().splitlines()


def test_untouched_record_verifies(record: Engine, cli: Any) -> None:
    code, err = verify_cli(cli)
    assert (code, err) == (0, [])
    with Session(record) as s:
        result = integrity.check(s)
    assert result["ok"] and result["history_ok"] and result["findings"] == []


def test_a_busy_record_verifies(record: Engine, tmp_path: Any) -> None:
    """Every way the ledger writes (imports of each state, requests, refusals, renewals, batch
    expiry, a material revision and invalidation) leaves a record that verifies: no finding is
    a false alarm."""
    csv = tmp_path / "in.csv"
    csv.write_text(
        "external_id,email,locale,purpose,state,given_at,valid_until\n"
        "imp-1,,,news,given,2025-01-01,\n"
        "imp-2,,,news,expired,,2025-02-01\n"
        "imp-3,,fr,offers,withdrawn,2025-01-01,\n"
        "imp-4,,,offers,refused,,\n"
        "imp-5,,,news,requested,,\n"
    )
    assert not importer.import_file(record, csv).errors
    with db.session_scope(record) as s:
        lifecycle.request(s, "bob", "news", Actor())
        lifecycle.refuse(s, "bob", "news", Actor())
        lifecycle.grant(s, "imp-5", "news", Actor())
        lifecycle.renew(s, "bob", "offers", Actor(reason="still keen"))
        lifecycle.grant(s, "alice", "offers", Actor())
    with db.session_scope(record) as s:
        assert lifecycle.expire_due(s, as_of=datetime.now(UTC) + timedelta(days=40))
    with db.session_scope(record) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        purposes.revise(s, "offers", material=True, title="Offers and deals")
    with db.session_scope(record) as s:
        assert lifecycle.invalidate_stale(s, "offers")
    with Session(record) as s:
        assert integrity.check(s, chunk=2)["findings"] == []


@pytest.mark.parametrize("edit", list(EDITS))
def test_each_edit_of_the_record_is_reported(record: Engine, cli: Any, edit: str) -> None:
    EDITS[edit](record)
    with Session(record) as s:
        assert audit.verify(s).ok  # the chain itself is untouched ...
    code, err = verify_cli(cli)  # ... but the record no longer matches it
    assert code == 1, err
    assert err and err[0].startswith("consentflow: ")
    with Session(record) as s:
        result = integrity.check(s)
    assert not result["ok"] and result["findings"]
    assert all("\n" not in finding for finding in result["findings"])


def test_the_reported_state_edit_is_named(record: Engine, cli: Any) -> None:
    assert cli("check", "alice", "news").code == 1
    _state_given(record)
    assert cli("check", "alice", "news").code == 0  # what the edit buys an attacker ...
    code, err = verify_cli(cli)  # ... and verify names it
    assert code == 1
    assert any("stored as given" in line and "withdrawn" in line for line in err), err


def test_an_edited_field_is_named(record: Engine) -> None:
    _edit_event(channel="web")(record)
    with Session(record) as s:
        findings = integrity.check(s)["findings"]
    assert any("channel" in f and "modified" in f for f in findings), findings


def test_deleted_audit_head_is_reported(record: Engine, cli: Any) -> None:
    run_sql(record, delete(AuditHead))
    code, err = verify_cli(cli)
    assert code == 1
    assert len(err) == 1 and "audit_head" in err[0], err


def test_modified_audit_head_is_reported(record: Engine, cli: Any) -> None:
    run_sql(record, update(AuditHead).values(hash="f" * 64))
    code, err = verify_cli(cli)
    assert code == 1 and len(err) == 1 and "head" in err[0], err


def _rechain(engine: Engine, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite entry ``seq``'s detail and re-hash the chain from there, head included: what an
    attacker who knows the (unkeyed) hash would do, or an entry written by a buggy release."""
    with Session(engine) as s:
        rows = list(s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all())
    prev = audit.GENESIS
    statements = []
    for entry in rows:
        row = {name: getattr(entry, name) for name in audit._FIELDS}
        if entry.seq == seq:
            row["detail"] = dict(entry.detail)
            change(row["detail"])
        new_hash = audit.digest(prev, row)
        statements.append(
            update(AuditEntry)
            .where(col(AuditEntry.seq) == entry.seq)
            .values(detail=row["detail"], prev_hash=prev, hash=new_hash)
        )
        prev = new_hash
    statements.append(update(AuditHead).values(hash=prev))
    run_sql(engine, *statements)


def _consent_entry(engine: Engine) -> int:
    with Session(engine) as s:
        return s.exec(select(AuditEntry.seq).where(AuditEntry.action == "consent.revoke")).one()


@pytest.mark.parametrize("missing", ["event_id", "to", "v"])
def test_an_entry_missing_a_field_is_reported(record: Engine, cli: Any, missing: str) -> None:
    _rechain(record, _consent_entry(record), lambda d: d.pop(missing))
    with Session(record) as s:
        assert audit.verify(s).ok
    code, err = verify_cli(cli)
    assert code == 1, err
    joined = "\n".join(err)
    assert f"'{missing}'" in joined or missing in joined, err


def test_an_entry_with_a_garbled_event_id_is_reported(record: Engine, cli: Any) -> None:
    _rechain(record, _consent_entry(record), lambda d: d.update(event_id="not-a-uuid"))
    code, err = verify_cli(cli)
    assert code == 1 and "event_id" in "\n".join(err), err


def test_findings_are_one_line_each(record: Engine, cli: Any) -> None:
    _state_given(record)
    _edit_event(channel="web")(record)
    _external_id(record)
    code, err = verify_cli(cli)
    assert code == 1
    assert len(err) >= 3, err
    r = cli("audit", "verify", "--json")
    assert r.code == 1 and json.loads(r.out)["ok"] is False


@pytest.mark.parametrize("chunk", [1, 2, 5000])
def test_small_batches_find_the_same(record: Engine, chunk: int) -> None:
    _state_given(record)
    _external_id(record)
    with Session(record) as s:
        small = integrity.check(s, chunk=chunk)["findings"]
        whole = integrity.check(s)["findings"]
    assert small == whole and len(whole) >= 2


def test_consent_row_deleted_or_history_orphaned_is_reported(record: Engine) -> None:
    run_sql(record, delete(Consent).where(col(Consent.state) == "given"))
    with Session(record) as s:
        findings = integrity.check(s)["findings"]
    assert any("no current-state row" in f for f in findings), findings


def test_subject_sequence_edit_is_reported(record: Engine) -> None:
    run_sql(record, update(Subject).where(Subject.external_id == "alice").values(last_seq=0))
    with Session(record) as s:
        findings = integrity.check(s)["findings"]
    assert any("sequence" in f for f in findings), findings

"""``consentflow subject erase``: text and --json, the agent recorded, one-line refusals (exit 2
for a mistake, 1 for a refused change) that change nothing."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import select

from consentflow import audit, db, lifecycle, purposes, subjects, systems
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, Subject


def seed(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
        subjects.add(s, "alice", email="alice@example.com")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())


def head(engine: Engine) -> int:
    with db.session_scope(engine) as s:
        return audit.verify(s).head_seq


def refused(r: Any, code: int) -> str:
    assert (r.code, "Traceback" in r.err) == (code, False), (r.code, r.err)
    [line] = r.err.strip().splitlines()
    return str(line)


def test_erase_from_the_terminal(engine: Engine, cli: Any) -> None:
    seed(engine)
    r = cli("subject", "erase", "alice", "--reason", "ticket 7", "--agent", "ann", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert (out["withdrawn"], out["notified"], out["deliveries"]) == (["news"], ["crm"], 2)
    with db.session_scope(engine) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "subject.erased")).one()
        subject = s.exec(select(Subject).where(Subject.subject_ref == out["subject_ref"])).one()
    assert (entry.actor, entry.channel, entry.detail["reason"]) == ("ann", "support", "ticket 7")
    assert subject.erased_at is not None and subject.email is None
    before = head(engine)
    line = refused(cli("subject", "erase", "alice", "--reason", "again"), 1)
    assert line == "consentflow: subject 'alice' is already erased"
    assert head(engine) == before


def test_erase_text_and_mistakes(engine: Engine, cli: Any) -> None:
    seed(engine)
    before = head(engine)
    assert "unknown subject 'bob'" in refused(cli("subject", "erase", "bob", "--reason", "x"), 2)
    assert "--reason" in cli("subject", "erase", "alice").err  # required (exit 2 by Typer)
    reason = refused(cli("subject", "erase", "alice", "--reason", "from alice@example.com"), 2)
    assert "email address" in reason and "alice@example.com" not in reason
    with engine.begin() as conn:  # a broken record refuses, saying why
        conn.execute(text("UPDATE consent_event SET reason = 'edited'"))
    line = refused(cli("subject", "erase", "alice", "--reason", "ticket 8"), 1)
    assert line.startswith("consentflow: refusing to erase a subject: audit verify fails: event")
    assert head(engine) == before
    with engine.begin() as conn:
        conn.execute(text("UPDATE consent_event SET reason = NULL"))
    r = cli("subject", "erase", "alice", "--reason", "ticket 8")
    assert r.code == 0 and r.out.startswith("subject erased: now "), r.err
    assert "1 consent(s) withdrawn, 0 expired, 1 system(s) to be told" in r.out

"""The access check is one indexed query per answer (issue 11: p50/p99 at a million consents),
on SQLite and PostgreSQL, whatever the answer: every reason code is found by the same single
statement, and an unknown system is still refused before anything is answered."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from consentflow import access, db, lifecycle, purposes, subjects, systems
from consentflow.access import Reason
from consentflow.errors import NotFound
from consentflow.lifecycle import Actor


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.add(s, "offers", title="Offers", validity_days=30)
        subjects.add(s, "alice")
        subjects.add(s, "bob")
        systems.add(s, "crm", ["news"])
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    return engine


def statements(engine: Engine, fn: Any) -> tuple[Any, list[str]]:
    """``fn(session)``'s result and the SQL statements it ran (BEGIN/COMMIT left out)."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append(sql)

    event.listen(engine, "before_cursor_execute", note)
    try:
        with db.session_scope(engine, readonly=True) as s:
            return fn(s), seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.mark.parametrize(
    "subject, purpose, system, reason",
    [
        ("alice", "news", "crm", Reason.GIVEN),
        ("alice", "news", None, Reason.GIVEN),
        ("bob", "news", "crm", Reason.NO_CONSENT),
        ("carol", "news", "crm", Reason.UNKNOWN_SUBJECT),
        ("alice", "offers", "crm", Reason.SYSTEM_NOT_AUTHORISED),
        ("alice", "nothing", "crm", Reason.UNKNOWN_PURPOSE),
    ],
)
def test_every_answer_is_one_statement(ledger, subject, purpose, system, reason):
    decision, sql = statements(ledger, lambda s: access.check(s, subject, purpose, system))
    assert decision.reason is reason
    assert decision.allowed is (reason is Reason.GIVEN)
    assert (decision.event_id is not None) is (reason is Reason.GIVEN)
    assert len(sql) == 1, sql


def test_an_unknown_system_is_refused_whatever_else_is_unknown(ledger):
    for subject, purpose in [("alice", "news"), ("carol", "nothing")]:
        with pytest.raises(NotFound, match="unknown system 'erp'"):
            statements(ledger, lambda s, a=subject, p=purpose: access.check(s, a, p, "erp"))

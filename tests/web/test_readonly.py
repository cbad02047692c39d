"""Routes that only read use read-only units of work: on SQLite they take no write lock, so the
access check, the feed and the dashboard answer while a writer holds the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, update
from sqlmodel import select

from consentflow import db, lifecycle, links
from consentflow import reports as dashboard
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import ApiToken, AuditHead, Subject, utcnow
from tests.support.web import bearer, client, seed

_WRITES = ("INSERT", "UPDATE", "DELETE")


@pytest.fixture
def web(engine):
    toks = seed(engine)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.revoke(s, "alice", "news", Actor())
        alice = s.exec(select(Subject.id).where(Subject.external_id == "alice")).one()
        toks.link = links.issue(s, LinkAction.PREFERENCES, alice)
    with client() as c:
        yield c, toks


def _reads(t) -> list[tuple[str, str, str]]:
    return [
        ("GET", "/api/v1/check?subject=alice&purpose=news", t.system),
        ("GET", "/api/v1/feed", t.system),
        ("GET", "/api/v1/me", t.system),
        ("GET", "/api/v1/subjects/alice", t.compliance),
        ("GET", "/api/v1/subjects/alice/history", t.support),
        ("GET", "/api/v1/purposes", t.compliance),
        ("GET", "/api/v1/deliveries/health", t.compliance),
        ("GET", "/api/v1/audit/verify", t.compliance),
        ("GET", "/dashboard", t.compliance),
        *(("GET", f"/dashboard/{name}.csv", t.compliance) for name in dashboard.TABLES),
        ("GET", f"/l/{t.link}", ""),
        ("HEAD", f"/l/{t.link}", ""),
    ]


@contextmanager
def _statements(engine) -> Iterator[list[tuple[bool, str]]]:
    """Every statement sent to the database: (on a read-only unit of work?, its verb)."""
    seen: list[tuple[bool, str]] = []

    def record(conn, cursor, statement, *args):
        readonly = bool(conn.get_execution_options().get("consentflow_readonly"))
        seen.append((readonly, statement.lstrip().split(None, 1)[0].upper()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _age_tokens(engine, by: timedelta) -> None:
    with db.session_scope(engine) as s:
        s.execute(update(ApiToken).values(last_used_at=utcnow() - by))


def test_reading_routes_write_nothing_and_use_read_only_units_of_work(web, engine):
    c, t = web
    _age_tokens(engine, timedelta(0))  # used just now: no last_used_at refresh is due
    for method, url, token in _reads(t):
        with _statements(engine) as seen:
            r = c.request(method, url, headers=bearer(token) if token else {})
        assert r.status_code == 200, (url, r.text)
        assert seen and all(readonly for readonly, _ in seen), (url, seen)
        assert not [verb for _, verb in seen if verb in _WRITES], (url, seen)


def test_token_use_is_still_recorded_in_a_unit_of_work_of_its_own(web, engine):
    """``last_used_at`` is refreshed (at most every ten minutes) outside the read-only unit."""
    c, t = web
    _age_tokens(engine, timedelta(hours=1))
    with _statements(engine) as seen:
        r = c.get("/api/v1/check?subject=alice&purpose=news", headers=bearer(t.system))
    assert r.status_code == 200
    assert not [verb for readonly, verb in seen if readonly and verb in _WRITES]
    assert [verb for readonly, verb in seen if not readonly and verb in _WRITES] == ["UPDATE"]
    with db.session_scope(engine) as s:
        used = s.exec(select(ApiToken.last_used_at).where(ApiToken.name == "crm-token")).one()
    assert used > utcnow() - timedelta(minutes=1)
    with _statements(engine) as seen:  # just refreshed: nothing more to write
        c.get("/api/v1/check?subject=alice&purpose=news", headers=bearer(t.system))
    assert not [verb for _, verb in seen if verb in _WRITES]


def test_reads_answer_while_a_writer_holds_its_locks(web, engine):
    """Another process is in the middle of a write (SQLite: the database's write lock;
    PostgreSQL: the audit head's row lock, which every change takes): reads still answer."""
    c, t = web
    _age_tokens(engine, timedelta(0))
    sqlite = engine.dialect.name == "sqlite"
    writer = engine.raw_connection()
    try:
        if sqlite:
            writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "SELECT seq FROM audit_head WHERE id = 1" + ("" if sqlite else " FOR UPDATE")
        )
        writer.execute("UPDATE audit_head SET seq = seq WHERE id = 1")
        for method, url, token in _reads(t):
            r = c.request(method, url, headers=bearer(token) if token else {})
            assert r.status_code == 200, (url, r.text)
    finally:
        writer.rollback()
        writer.close()
    with db.session_scope(engine) as s:
        assert s.exec(select(AuditHead.seq)).one() > 0

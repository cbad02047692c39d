"""The transfer gate's doors in the API: ``POST /api/v1/check/batch`` and
``GET /api/v1/export/eligible``: who may call them, what they answer, and that the export streams
(the first line reaches a client of a real server while the next page's read is still pending)
and is audited however it ends."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import access, db, lifecycle, subjects, transfers, views
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry
from consentflow.views import EligibleOut
from consentflow.web.api._streaming import AuditedStream
from tests.support.web import Tokens, bearer, client, seed, served

GIVEN = ["alice", "bob", "c1", "c2", "c3"]  # subject id order
EXPORT = "/api/v1/export/eligible"
BATCH = "/api/v1/check/batch"


@pytest.fixture
def toks(engine: Engine) -> Tokens:
    made = seed(engine)  # crm: news; billing: invoices
    with db.session_scope(engine) as s:
        for ext in GIVEN[2:]:
            subjects.add(s, ext)
        for ext in GIVEN:
            lifecycle.grant(s, ext, "news", Actor())
    return made


def entries(engine: Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AuditEntry).where(AuditEntry.action == action).order_by(col(AuditEntry.seq))
            )
        )


def sha(ids: list[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def test_who_may_check_a_batch(engine: Engine, toks: Tokens) -> None:
    body = {"purpose": "news", "system": "crm", "subjects": ["alice", "nobody"]}
    with client() as c:
        for token in (toks.admin, toks.compliance, toks.support, toks.system):
            r = c.post(BATCH, json=body, headers=bearer(token))
            assert r.status_code == 200, r.text
        # A system token speaks for its own system: named, left out, or another one.
        own = c.post(BATCH, json={**body, "system": None}, headers=bearer(toks.system))
        assert own.status_code == 200 and own.json()["system"] == "crm"
        other = c.post(BATCH, json=body, headers=bearer(toks.other_system))
        assert other.status_code == 403
        assert other.json()["detail"] == "this token speaks for system 'billing' only"
        closed = c.post(BATCH, json={**body, "system": None}, headers=bearer(toks.other_system))
        assert closed.status_code == 409
        assert "system_not_authorised" in closed.json()["detail"]
        assert c.post(BATCH, json=body).status_code == 401
        unnamed = c.post(BATCH, json={**body, "system": None}, headers=bearer(toks.compliance))
        assert unnamed.status_code == 422
        assert unnamed.json()["detail"].startswith("system: required")
    assert len(entries(engine, transfers.CHECKED)) == 5  # each answer once, refusals never


def test_a_batch_answers_each_subject_in_order(engine: Engine, toks: Tokens) -> None:
    asked = ["c2", "nobody", "alice"]
    with client() as c:
        r = c.post(
            BATCH,
            json={"purpose": "news", "system": "crm", "subjects": asked},
            headers=bearer(toks.compliance),
        )
        assert r.status_code == 200, r.text
        out = r.json()
        # 10,000 ids of the longest kind (2 MB) fit the body cap; 10,001 are one 422 line.
        longest = [f"{i:05d}" + "x" * 195 for i in range(transfers.MAX_BATCH)]
        big = {"purpose": "news", "system": "crm", "subjects": longest}
        full = c.post(BATCH, json=big, headers=bearer(toks.compliance))
        assert full.status_code == 200, full.text[:300]
        assert full.json()["allowed"] == 0 and full.json()["checked"] == transfers.MAX_BATCH
        over = c.post(
            BATCH,
            json={**big, "subjects": ["alice"] * (transfers.MAX_BATCH + 1)},
            headers=bearer(toks.compliance),
        )
        assert over.status_code == 422
        assert "\n" not in over.json()["detail"] and "subjects" in over.json()["detail"]
        unknown = c.post(
            BATCH,
            json={"purpose": "nope", "system": "crm", "subjects": ["alice"]},
            headers=bearer(toks.compliance),
        )
        assert unknown.status_code == 404
    assert [d["subject"] for d in out["decisions"]] == asked
    assert [d["reason"] for d in out["decisions"]] == ["given", "unknown_subject", "given"]
    with Session(engine) as s:
        d = access.check(s, "c2", "news", "crm")
    assert out["decisions"][0]["event_id"] == str(d.event_id)
    assert (out["checked"], out["allowed"], out["sha256"]) == (3, 2, sha(["c2", "alice"]))
    assert out["audit_seq"] == entries(engine, transfers.CHECKED)[0].seq
    assert len(entries(engine, transfers.CHECKED)) == 2  # the refusals wrote nothing


def test_who_may_export(engine: Engine, toks: Tokens) -> None:
    query = {"purpose": "news", "system": "crm"}
    with client() as c:
        for token in (toks.admin, toks.compliance, toks.system):
            r = c.get(EXPORT, params=query, headers=bearer(token))
            assert r.status_code == 200, r.text
            assert len(r.text.splitlines()) == len(GIVEN)
        assert c.get(EXPORT, params={"purpose": "news"}, headers=bearer(toks.system)).is_success
        support = c.get(EXPORT, params=query, headers=bearer(toks.support))
        assert support.status_code == 403  # support serves callers, not cohorts
        assert "needs" in support.json()["detail"]
        other = c.get(EXPORT, params=query, headers=bearer(toks.other_system))
        assert other.status_code == 403
        closed = c.get(EXPORT, params={"purpose": "news"}, headers=bearer(toks.other_system))
        assert closed.status_code == 409
        assert closed.json()["detail"] == (
            "system 'billing' is not registered for purpose 'news' (system_not_authorised): "
            "nothing is released; "
            "see `consentflow system list` for the purposes it is registered for"
        )
        assert c.get(EXPORT, params=query).status_code == 401
        bad = c.get(EXPORT, params={**query, "format": "xml"}, headers=bearer(toks.admin))
        assert bad.status_code == 422
    assert len(entries(engine, transfers.EXPORTED)) == 4


def test_an_export_in_each_format_carries_the_evidence(engine: Engine, toks: Tokens) -> None:
    with client() as c:
        lines = c.get(
            EXPORT, params={"purpose": "news", "system": "crm"}, headers=bearer(toks.admin)
        )
        table = c.get(
            EXPORT,
            params={"purpose": "news", "system": "crm", "format": "csv"},
            headers=bearer(toks.admin),
        )
    assert lines.headers["content-type"] == "application/x-ndjson"
    assert table.headers["content-type"] == "text/csv; charset=utf-8"
    with Session(engine) as s:
        expected = []
        for ext in GIVEN:
            d = access.check(s, ext, "news", "crm")
            expected.append(EligibleOut.model_validate(d, from_attributes=True).model_dump_json())
    assert lines.text.splitlines() == expected  # the bulk writer is the view's own JSON form
    rows = table.text.splitlines()
    assert rows[0] == "subject,event_id,purpose_version,valid_until"
    for row, line in zip(rows[1:], lines.text.splitlines(), strict=True):
        one = json.loads(line)
        assert row == f"{one['subject']},{one['event_id']},1,{one['valid_until']}"
    (jsonl, csv) = entries(engine, transfers.EXPORTED)
    for entry, fmt in ((jsonl, "jsonl"), (csv, "csv")):
        assert entry.actor == "api:root"
        assert entry.detail["format"] == fmt
        assert (entry.detail["count"], entry.detail["complete"]) == (5, True)
        assert entry.detail["sha256"] == sha(GIVEN)


def test_the_bulk_writers_fall_back_for_values_they_cannot_join() -> None:
    # The identifier rule keeps such ids out; the writers stay right even if one got in.
    odd = transfers.Eligible('x},{"y', uuid.uuid4(), 1, None)
    plain = transfers.Eligible("a", uuid.uuid4(), 2, datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC))
    lines = views.eligible_jsonl([odd, plain]).decode().splitlines()
    assert lines == [
        EligibleOut.model_validate(row, from_attributes=True).model_dump_json()
        for row in (odd, plain)
    ]
    table = list(csv.reader(io.StringIO(views.eligible_csv([odd, plain], header=True).decode())))
    assert table == [
        list(views.ELIGIBLE_FIELDS),
        ['x},{"y', str(odd.event_id), "1", ""],
        ["a", str(plain.event_id), "2", "2027-01-02T03:04:05Z"],
    ]


class PageHold:
    """Around ``transfers.read_page``: counts the pages read, and holds the second read until
    ``release`` is set (so a page boundary is pending while the test looks)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.read = 0
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.read == 1:
            assert self.release.wait(30), "the test never released the second page"
        out = self.real(*args, **kwargs)
        self.read += 1
        return out


@pytest.fixture
def held(engine: Engine, toks: Tokens, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real server whose exports read 2 consents a page, holding the second page; the
    ``finished`` event is set once an export's audit entry is written."""
    hold = PageHold(transfers.read_page)
    finished = threading.Event()
    finish = transfers.Export.finish

    def finish_and_say(self: transfers.Export) -> int:
        try:
            return finish(self)
        finally:
            finished.set()

    monkeypatch.setattr(transfers, "PAGE_SIZE", 2)
    monkeypatch.setattr(transfers, "read_page", hold)
    monkeypatch.setattr(transfers.Export, "finish", finish_and_say)
    with served(monkeypatch) as base:
        yield base, hold, finished


def test_the_first_line_arrives_before_the_last_page_is_read(
    engine: Engine, toks: Tokens, held: Any
) -> None:
    base, hold, finished = held
    with httpx.stream(
        "GET",
        f"{base}{EXPORT}",
        params={"purpose": "news", "system": "crm"},
        headers=bearer(toks.compliance),
        timeout=10,  # a server that read every page before sending never answers in time
    ) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["subject"] == "alice"
        assert hold.read == 1  # the second page (of three) is held: not read yet
        hold.release.set()
        assert [json.loads(line)["subject"] for line in lines] == GIVEN[1:]
    assert hold.read == 3
    assert finished.wait(10)
    (entry,) = entries(engine, transfers.EXPORTED)
    assert (entry.detail["count"], entry.detail["complete"]) == (5, True)


def test_a_client_gone_midway_is_recorded_as_what_it_was_sent(
    engine: Engine, toks: Tokens, held: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, hold, finished = held
    listen = AuditedStream.listen_for_disconnect

    async def listen_then_release(self: Any, receive: Any) -> None:
        await listen(self, receive)
        hold.release.set()  # the server has seen the client go: let the held page be read

    monkeypatch.setattr(AuditedStream, "listen_for_disconnect", listen_then_release)
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "GET",
            f"{base}{EXPORT}",
            params={"purpose": "news", "system": "crm"},
            headers=bearer(toks.compliance),
        ) as r,
    ):
        assert json.loads(next(r.iter_lines()))["subject"] == "alice"
    # The connection is closed with the second page held.
    assert finished.wait(10)
    (entry,) = entries(engine, transfers.EXPORTED)
    assert (entry.detail["count"], entry.detail["complete"]) == (2, False)
    assert entry.detail["sha256"] == sha(GIVEN[:2])

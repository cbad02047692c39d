"""``consentflow link``: one line, a signed link that opens the right page; bad input is one line
on stderr, exit 2, and nothing recorded; the audit trail names the agent, never the token."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from consentflow import db
from consentflow.models import AuditEntry, AuditHead
from tests.support.web import client, seed


@pytest.fixture
def seeded(engine):
    seed(engine)
    return engine


def _head(engine) -> int:
    with db.session_scope(engine) as s:
        return s.exec(select(AuditHead.seq)).one()


def _path(url: str) -> str:
    return "/l/" + url.rpartition("/l/")[2]


def test_link_prints_one_line_that_opens_the_preference_page(cli, seeded):
    r = cli("link", "alice", "--action", "preferences", "--agent", "sam")
    assert r.code == 0, r.err
    (line,) = r.out.splitlines()
    assert line.startswith("http://127.0.0.1:8000/l/")
    with client() as c:
        page = c.get(_path(line))
    assert page.status_code == 200 and "Monthly newsletter" in page.text
    with db.session_scope(seeded) as s:
        entry = s.exec(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.actor, entry.channel) == ("link.issued", "sam", "support")
    assert line.rpartition(".")[2] not in json.dumps(entry.detail)


@pytest.mark.parametrize(
    ("args", "page_text"),
    [
        (("--action", "renew", "--purpose", "news"), "Monthly newsletter"),
        (("--action", "grant", "--purpose", "invoices"), "Invoices by email"),
        (("--action", "revoke", "--purpose", "news"), "Withdraw"),
    ],
)
def test_each_action_opens_its_page(cli, seeded, args, page_text):
    r = cli("link", "alice", *args)
    assert r.code == 0, r.err
    with client() as c:
        page = c.get(_path(r.out.strip()))
    assert page.status_code == 200 and page_text in page.text


def test_json_output_is_the_api_view(cli, seeded):
    r = cli("link", "alice", "--action", "grant", "--purpose", "news", "--json")
    data = json.loads(r.out)
    assert set(data) == {"subject", "action", "purpose", "url", "expires_at"}
    assert (data["action"], data["purpose"]) == ("grant", "news")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("alice", "--action", "forget"), "bad link action 'forget'"),
        (("alice", "--action", "renew"), "a renew link needs a purpose"),
        (("alice", "--action", "preferences", "--purpose", "news"), "is for all purposes"),
        (("alice", "--action", "grant", "--purpose", "nope"), "unknown purpose 'nope'"),
        (("zoe",), "unknown subject 'zoe'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_records_nothing(cli, seeded, args, message):
    before = _head(seeded)
    r = cli("link", *args)
    assert r.code == 2 and r.out == ""
    (line,) = r.err.splitlines()
    assert line.startswith("consentflow: ") and message in line
    assert _head(seeded) == before

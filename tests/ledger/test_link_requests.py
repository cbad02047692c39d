"""Links on demand, in the ledger: ``issue_for`` (support) and ``request_by_email`` / ``send``
(a person asking for a new link), on both databases, against a real SMTP server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import func, select

from consentflow import db, link_requests, links, mail, subjects
from consentflow.actors import agent_actor
from consentflow.errors import InvalidInput, NotFound
from consentflow.keys import instance_secret
from consentflow.links import LinkAction
from consentflow.models import (
    AuditEntry,
    AuditHead,
    EmailMessage,
    EmailSuppression,
    Subject,
    utcnow,
)
from tests.support.web import seed


@pytest.fixture
def ledger(engine):
    seed(engine)  # alice (alice@example.com, news/invoices), bob (no address)
    return engine


def _head(engine) -> int:
    with db.session_scope(engine) as s:
        return s.exec(select(AuditHead.seq)).one()


def _messages(engine) -> list[EmailMessage]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(EmailMessage).order_by(EmailMessage.id)).all())


def test_issue_for_signs_a_link_and_audits_who_issued_it_never_the_token(ledger):
    with db.session_scope(ledger) as s:
        issued = link_requests.issue_for(
            s, "alice", "renew", "news", actor=agent_actor("sam", None)
        )
    token = issued.url.rpartition("/l/")[2]
    assert token not in repr(issued)
    with db.session_scope(ledger) as s:
        link = links.verify(s, token, LinkAction.RENEW)
        assert link.purpose_id is not None
        entry = s.exec(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.actor, entry.channel) == ("link.issued", "sam", "support")
    assert entry.purpose_key == "news" and entry.detail["action"] == "renew"
    assert entry.subject_ref and "alice" not in str(entry.detail)
    assert token not in str(entry.detail) and token.partition(".")[2] not in str(entry.detail)


@pytest.mark.parametrize(
    ("action", "purpose", "message"),
    [
        ("forget", None, "bad link action 'forget'"),
        ("renew", None, "a renew link needs a purpose"),
        ("grant", None, "a grant link needs a purpose"),
        ("preferences", "news", "a preferences link is for all purposes"),
    ],
)
def test_issue_for_refuses_bad_input_and_writes_nothing(ledger, action, purpose, message):
    before = _head(ledger)
    with db.session_scope(ledger) as s, pytest.raises(InvalidInput, match=message):
        link_requests.issue_for(s, "alice", action, purpose, actor=agent_actor("sam"))
    assert _head(ledger) == before


def test_issue_for_unknown_subject_or_purpose_is_not_found(ledger):
    with db.session_scope(ledger) as s, pytest.raises(NotFound, match="unknown subject 'zoe'"):
        link_requests.issue_for(s, "zoe", "preferences", actor=agent_actor("sam"))
    with db.session_scope(ledger) as s, pytest.raises(NotFound, match="unknown purpose"):
        link_requests.issue_for(s, "alice", "grant", "nope", actor=agent_actor("sam"))


def test_unknown_address_records_nothing(ledger):
    before = _head(ledger)
    for address in ("nobody@example.com", "", "not-an-address", "alice@example.co"):
        with db.session_scope(ledger) as s:
            assert link_requests.request_by_email(s, address) is None
    assert _messages(ledger) == [] and _head(ledger) == before


def test_known_address_is_matched_trimmed_and_case_blind(ledger):
    with db.session_scope(ledger) as s:
        pending = link_requests.request_by_email(s, "  Alice@Example.COM ")
    assert pending is not None
    (row,) = _messages(ledger)
    assert (row.kind, row.status, row.message_id) == (
        "preference_link",
        "claimed",
        pending.message_id,
    )
    with db.session_scope(ledger) as s:
        entry = s.exec(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert entry.action == "link.requested" and "example.com" not in str(entry.detail)


def _found(engine, typed: str) -> int | None:
    """The subject id ``request_by_email`` records a message for (rolled back: nothing kept)."""
    with db.session_scope(engine) as s:
        pending = link_requests.request_by_email(s, typed)
        s.rollback()
    return pending.subject_id if pending else None


def test_typed_addresses_go_through_the_address_rule_before_matching(ledger):
    with db.session_scope(ledger) as s:
        ann = subjects.add(s, "ann", email="Ann@Bücher.Example").id
        jorg = subjects.add(s, "jorg", email="jörg@example.org").id
        alice = subjects.get(s, "alice").id
    # Stored as the rule normalises it: the domain lowercased, in Unicode; the local part's case
    # kept.
    with db.session_scope(ledger) as s:
        assert s.get(Subject, ann).email == "Ann@bücher.example"
    # The ASCII (IDNA A-label) form of the domain finds the Unicode form, in any case; the local
    # part is compared case-blind (as the suppression list compares).
    assert _found(ledger, "Ann@xn--bcher-kva.example") == ann
    assert _found(ledger, " ann@XN--BCHER-KVA.EXAMPLE ") == ann
    assert _found(ledger, "ANN@BÜCHER.example") == ann
    # A non-ASCII local part typed as stored, with the domain in any case.
    assert _found(ledger, "jörg@EXAMPLE.org") == jorg
    assert _found(ledger, "ALICE@example.com") == alice
    # What the rule refuses matches nobody, even when it contains a known address.
    for refused in (
        "alice@example.com, ann@bücher.example",
        "Alice <alice@example.com>",
        "alice@example.com.",
        "alice@",
    ):
        assert _found(ledger, refused) is None, refused
    assert _messages(ledger) == []


def test_per_address_limit_counts_the_recorded_messages_of_the_last_hour(ledger, monkeypatch):
    monkeypatch.setenv("CONSENTFLOW_LINK_REQUESTS_PER_ADDRESS", "2")
    from consentflow import settings

    settings.get_settings.cache_clear()
    now = utcnow()
    with db.session_scope(ledger) as s:
        assert link_requests.request_by_email(s, "alice@example.com", now=now) is not None
        assert link_requests.request_by_email(s, "alice@example.com", now=now) is not None
        assert link_requests.request_by_email(s, "alice@example.com", now=now) is None
    assert len(_messages(ledger)) == 2
    # A deferred message never reached the person: it does not count.
    with db.session_scope(ledger) as s:
        row = s.exec(select(EmailMessage)).first()
        row.status = "deferred"
        s.add(row)
    with db.session_scope(ledger) as s:
        assert link_requests.request_by_email(s, "alice@example.com", now=now) is not None
        assert link_requests.request_by_email(s, "alice@example.com", now=now) is None
    # An hour later the window has moved on.
    later = now + link_requests.WINDOW + timedelta(seconds=1)
    with db.session_scope(ledger) as s:
        assert link_requests.request_by_email(s, "alice@example.com", now=later) is not None


def test_suppressed_address_records_nothing(ledger):
    with db.session_scope(ledger) as s:
        key = mail.address_hash(instance_secret(s), "alice@example.com")
        s.add(EmailSuppression(address_hash=key, reason="550 no such user"))
    with db.session_scope(ledger) as s:
        assert link_requests.request_by_email(s, "alice@example.com") is None
    assert _messages(ledger) == []


def test_send_delivers_a_working_preference_link_and_records_it_sent(ledger, smtp_sink):
    with db.session_scope(ledger) as s:
        pending = link_requests.request_by_email(s, "alice@example.com")
    assert link_requests.send(pending) == mail.SendStatus.SENT
    (got,) = smtp_sink.to("alice@example.com")
    assert got.message["Message-ID"] == pending.message_id
    text = got.part("plain")
    url = next(w for w in text.split() if "/l/" in w)
    assert url.startswith("https://consent.example.org/l/")
    with db.session_scope(ledger) as s:
        link = links.verify(s, url.rpartition("/l/")[2], LinkAction.PREFERENCES)
        assert link.subject_id == pending.subject_id and link.purpose_id is None
    assert "Sent on behalf of consentflow" in text
    (row,) = _messages(ledger)
    assert row.status == "sent" and row.sent_at is not None


def test_a_bounce_is_recorded_and_suppresses_the_address(ledger, smtp_sink):
    smtp_sink.script("alice@example.com", "550 5.1.1 no such user")
    with db.session_scope(ledger) as s:
        pending = link_requests.request_by_email(s, "alice@example.com")
    assert link_requests.send(pending) == mail.SendStatus.BOUNCED
    (row,) = _messages(ledger)
    assert row.status == "bounced" and "alice" not in (row.error or "")
    with db.session_scope(ledger) as s:
        assert s.exec(select(func.count()).select_from(EmailSuppression)).one() == 1
        assert link_requests.request_by_email(s, "alice@example.com") is None


def test_a_server_that_is_down_defers_and_the_person_may_ask_again(ledger, smtp_down):
    with db.session_scope(ledger) as s:
        pending = link_requests.request_by_email(s, "alice@example.com")
    assert link_requests.send(pending) == mail.SendStatus.DEFERRED
    (row,) = _messages(ledger)
    assert row.status == "deferred"
    with db.session_scope(ledger) as s:
        assert link_requests.recent_requests(s, pending.subject_id, utcnow()) == 0


def test_an_address_the_rule_refuses_is_recorded_failed_with_its_reason(ledger, smtp_sink):
    with db.session_scope(ledger) as s:
        pending = link_requests.request_by_email(s, "alice@example.com")
    # Between the request and the send, the stored address became one the rule refuses (a value
    # written before the rule existed behaves the same): this message alone fails.
    with db.session_scope(ledger) as s:
        alice = s.get(Subject, pending.subject_id)
        alice.email = "alice@localhost"
        s.add(alice)
    assert link_requests.send(pending) == mail.SendStatus.FAILED
    assert smtp_sink.received == []
    (row,) = _messages(ledger)
    assert row.status == "failed" and row.sent_at is None
    assert row.error.startswith("not sent: InvalidInput: bad email address")
    assert "alice" not in row.error and "localhost" not in row.error
    with db.session_scope(ledger) as s:
        assert s.exec(select(func.count()).select_from(EmailSuppression)).one() == 0
        # A failed message went nowhere, but it is not retried: it counts toward the limit.
        assert link_requests.recent_requests(s, pending.subject_id, utcnow()) == 1

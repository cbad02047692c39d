"""Collection follow-ups and lapsing, as plain batch functions, on both databases."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db, lifecycle, links, mail, purposes, sweeps
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import Consent, ConsentRequest, EmailMessage, State, utcnow
from tests.support.seeding import audit_entries, count, row_counts, seed_subjects, verify_audit
from tests.support.smtp import SmtpSink

DAY = timedelta(days=1)


@pytest.fixture
def asked(engine):  # type: ignore[no-untyped-def]
    """Four subjects asked about "news" 8 days ago (p3 has no email address)."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly news", validity_days=365)
    seed_subjects(engine, 3)
    seed_subjects(engine, 1, prefix="q", email=False)
    with db.session_scope(engine) as s:
        for name in ("p0", "p1", "p2", "q0"):
            lifecycle.request(s, name, "news", Actor())
        s.exec(update(ConsentRequest).values(requested_at=utcnow() - 8 * DAY))
    return engine


def follow_up(engine, as_of, *, dry_run: bool = False, size: int = 50, **kw):  # type: ignore[no-untyped-def]
    total: sweeps.Counts = Counter()
    with mail.Mailer() as m:
        ctx = sweeps.SweepContext(
            as_of,
            mailer=None if dry_run else m,
            followup_after_days=7,
            followup_max=2,
            dry_run=dry_run,
            engine=engine,
            **kw,
        )
        for batch in sweeps.drain(
            lambda size, cursor: sweeps.followup_batch(ctx, size, cursor),
            batch_size=size,
        ):
            total.update(batch.counts)
    return total


def requests(engine) -> dict[int, tuple[str, int]]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        rows = s.exec(
            select(ConsentRequest.subject_id, ConsentRequest.status, ConsentRequest.followups_sent)
        ).all()
    return {sid: (status, n) for sid, status, n in rows}


def backdate_sends(engine, days: int) -> None:  # type: ignore[no-untyped-def]
    """Pretend the last follow-ups went out ``days`` ago."""
    with db.session_scope(engine) as s:
        s.exec(
            update(ConsentRequest)
            .where(col(ConsentRequest.last_sent_at).is_not(None))
            .values(last_sent_at=utcnow() - days * DAY)
        )


def test_follow_ups_up_to_the_maximum_then_the_request_lapses(asked, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with db.session_scope(asked) as s:
        lifecycle.grant(s, "p2", "news", Actor())  # answered: never followed up
    assert follow_up(asked, now, run_id="r1") == {("news", "sent"): 2, ("news", "lapsed"): 1}
    assert requests(asked) == {1: ("open", 1), 2: ("open", 1), 3: ("answered", 0), 4: ("lapsed", 0)}
    assert follow_up(asked, now) == {}  # not again within 7 days
    backdate_sends(asked, 8)
    assert follow_up(asked, now) == {("news", "sent"): 2}
    assert follow_up(asked, now) == {}
    backdate_sends(asked, 8)
    assert follow_up(asked, now, run_id="r3") == {("news", "lapsed"): 2}
    assert requests(asked) == {
        1: ("lapsed", 2),
        2: ("lapsed", 2),
        3: ("answered", 0),
        4: ("lapsed", 0),
    }
    assert len(smtp_sink.received) == 4
    # Lapsing closes the request; the consent stays "requested".
    with db.session_scope(asked) as s:
        states = dict(s.exec(select(Consent.subject_id, Consent.state)).all())
        closed = s.exec(select(ConsentRequest.closed_at).where(ConsentRequest.subject_id == 1))
        assert closed.one() is not None
    assert states == {1: "requested", 2: "requested", 3: "given", 4: "requested"}
    lapsed = audit_entries(asked, "request.lapsed")
    assert [(e.run_id, e.detail["followups_sent"]) for e in lapsed] == [
        ("r1", 0),
        ("r3", 2),
        ("r3", 2),
    ]
    assert lapsed[0].detail["reason"] == "no email address to follow up"
    assert follow_up(asked, now + 100 * DAY) == {}
    verify_audit(asked)


def test_the_follow_up_email(asked, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    follow_up(asked, utcnow(), purposes=("news",))
    got = smtp_sink.to("p0@example.com")[0]
    assert got.message["Subject"] == 'Reminder: may we use your data for "Monthly news"?'
    assert got.message["List-Unsubscribe"] is None  # nothing to withdraw yet
    text = got.part("plain")
    lines = text.splitlines()
    grant = lines[lines.index("To agree:") + 1]
    assert grant in got.part("html")
    with db.session_scope(asked) as s:
        link = links.verify(s, grant.rsplit("/", 1)[1], LinkAction.GRANT)
    assert link.subject_id == 1 and link.purpose_id == 1
    assert "last reminder" not in text
    backdate_sends(asked, 8)
    follow_up(asked, utcnow())
    assert "last reminder" in smtp_sink.to("p0@example.com")[1].part("plain")


def test_a_deferred_follow_up_is_not_counted(asked, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    smtp_sink.script("p0@example.com", "451 4.3.2 system not accepting messages")
    assert follow_up(asked, now) == {
        ("news", "sent"): 2,
        ("news", "deferred"): 1,
        ("news", "lapsed"): 1,
    }
    with db.session_scope(asked) as s:
        row = s.exec(select(ConsentRequest).where(ConsentRequest.subject_id == 1)).one()
        assert (row.followups_sent, row.last_sent_at) == (0, None)
    assert follow_up(asked, now) == {("news", "sent"): 1}
    assert requests(asked)[1] == ("open", 1)
    assert count(asked, EmailMessage, EmailMessage.request_id == 1) == 2


def test_suppressed_address_lapses_instead(asked, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    smtp_sink.script("p1@example.com", "550 5.1.1 mailbox unavailable")
    now = utcnow()
    follow_up(asked, now)
    backdate_sends(asked, 8)
    assert follow_up(asked, now) == {("news", "sent"): 2, ("news", "lapsed"): 1}
    assert requests(asked)[2] == ("lapsed", 1)
    assert smtp_sink.to("p1@example.com") == []


def test_dry_run(asked, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    before = row_counts(asked)
    preview = follow_up(asked, now, dry_run=True, size=1)
    assert row_counts(asked) == before and smtp_sink.received == []
    assert preview == follow_up(asked, now, size=1) == {("news", "sent"): 3, ("news", "lapsed"): 1}
    assert {s for s, _ in requests(asked).values()} == {"open", "lapsed"}
    assert count(asked, Consent, Consent.state == State.REQUESTED.value) == 4

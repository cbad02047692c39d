"""Renewal reminders as plain batch functions, on both databases, over a real SMTP server."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db, i18n, lifecycle, links, mail, purposes, sweeps
from consentflow.keys import instance_secret
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import Consent, EmailMessage, EmailSuppression, utcnow
from consentflow.sweeps import claims
from tests.support.seeding import (
    audit_entries,
    count,
    give,
    row_counts,
    seed_subjects,
    verify_audit,
)
from tests.support.smtp import SmtpSink

STAGES = (1, 7, 30)
DAY = timedelta(days=1)


@pytest.fixture
def news(engine):  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly news", validity_days=365)
    return engine


def remind_all(engine, as_of, *, size: int = 100, mailer: mail.Mailer | None = None, **kw):  # type: ignore[no-untyped-def]
    """Run batches until done, as the flow does; returns the summed counts."""
    total: sweeps.Counts = Counter()

    def step(size: int, cursor: int) -> sweeps.Batch:
        ctx = sweeps.SweepContext(as_of, mailer=mailer, stages=STAGES, engine=engine, **kw)
        return sweeps.remind_batch(ctx, size, cursor)

    if mailer is None and not kw.get("dry_run"):
        with mail.Mailer() as m:
            return remind_all(engine, as_of, size=size, mailer=m, **kw)
    for batch in sweeps.drain(step, batch_size=size):
        total.update(batch.counts)
    return total


def stages(engine) -> dict[int, int | None]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return dict(s.exec(select(Consent.subject_id, Consent.reminder_stage)).all())


def test_only_the_nearest_due_stage_is_sent_once(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = seed_subjects(news, 5)
    # 40 days (nothing due), 20 (30 due), 5 (30 and 7 due: only 7), 12 hours (all due: only 1),
    # and already past its end (the expiry sweep's business, not a reminder's).
    ends = [now + 40 * DAY, now + 20 * DAY, now + 5 * DAY, now + DAY / 2, now - DAY]
    give(news, ids, "news", ends)
    assert remind_all(news, now) == {("news", "sent"): 3}
    assert stages(news) == {ids[0]: None, ids[1]: 30, ids[2]: 7, ids[3]: 1, ids[4]: None}
    got = {r.recipients[0]: r for r in smtp_sink.received}
    assert sorted(got) == ["p1@example.com", "p2@example.com", "p3@example.com"]

    # Run again at once, and again later: no stage twice; the next stage when it falls due.
    assert remind_all(news, now) == {}
    # Two weeks on, p0 reaches its 30-day stage and p1 its 7-day stage.
    assert remind_all(news, now + 14 * DAY) == {("news", "sent"): 2}
    assert (stages(news)[ids[0]], stages(news)[ids[1]]) == (30, 7)
    assert len(smtp_sink.received) == 5
    assert count(news, EmailMessage, EmailMessage.status == "sent") == 5
    verify_audit(news)


def test_renewing_resets_the_stages(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    [sid] = seed_subjects(news, 1)
    give(news, [sid], "news", now + 3 * DAY)
    assert remind_all(news, now) == {("news", "sent"): 1}
    with db.session_scope(news) as s:
        lifecycle.renew(s, "p0", "news", Actor())
    assert stages(news)[sid] is None
    assert remind_all(news, now) == {}  # a year to go
    with db.session_scope(news) as s:
        valid_until = s.exec(select(Consent.valid_until)).one()
    assert valid_until is not None
    assert remind_all(news, valid_until - 6 * DAY) == {("news", "sent"): 1}
    assert stages(news)[sid] == 7
    assert [m.status for m in _messages(news)] == ["sent", "sent"]


def test_the_email_carries_renew_and_revoke_links(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    [sid] = seed_subjects(news, 1, locale="fr-CA")
    give(news, [sid], "news", now + 3 * DAY)
    remind_all(news, now, run_id="run-42")
    [got] = smtp_sink.received
    msg = got.message
    [row] = _messages(news)
    assert msg["Message-ID"] == row.message_id and row.run_id == "run-42"
    assert msg["From"] == "Consent Desk <consent@example.org>"
    assert msg["Content-Language"] == "fr"
    assert "« Monthly news » prend fin le" in msg["Subject"]
    text, html = got.part("plain"), got.part("html")
    renew = _link_after(text, "renouvelez-le ici :")
    revoke = _link_after(text, "Pour le retirer dès maintenant :")
    assert msg["List-Unsubscribe"] == f"<{revoke}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert revoke.startswith("https://consent.example.org/l/") and renew in html
    with db.session_scope(news) as s:
        purpose_id = purposes.get(s, "news").id
        for url, action in ((renew, LinkAction.RENEW), (revoke, LinkAction.REVOKE)):
            link = links.verify(s, url.rsplit("/", 1)[1], action)
            assert (link.subject_id, link.purpose_id) == (sid, purpose_id)
        with pytest.raises(links.BadLink):
            links.verify(s, renew.rsplit("/", 1)[1], LinkAction.REVOKE)
    [entry] = audit_entries(news, "email.sent")
    assert entry.run_id == "run-42" and entry.purpose_key == "news"
    assert entry.detail["message_id"] == row.message_id and entry.detail["stage"] == 7
    assert "@" not in str(entry.detail).replace(row.message_id, "")


def _link_after(text: str, label: str) -> str:
    lines = text.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.endswith(label)]
    return lines[at + 1].strip()


def _messages(engine) -> list[EmailMessage]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        return list(s.exec(select(EmailMessage).order_by(col(EmailMessage.id))).all())


def test_a_4xx_leaves_the_item_due_then_it_is_sent_once(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = seed_subjects(news, 2)
    give(news, ids, "news", [now + 20 * DAY, now + 5 * DAY])
    # p1 already had its 30-day reminder: a deferral must restore exactly that.
    with db.session_scope(news) as s:
        s.exec(update(Consent).where(col(Consent.subject_id) == ids[1]).values(reminder_stage=30))
        s.add(_sent(ids[1], 30))
    smtp_sink.script("p0@example.com", "450 4.2.0 greylisted")
    smtp_sink.script("p1@example.com", "451 4.3.0 local problem")
    assert remind_all(news, now) == {("news", "deferred"): 2}
    assert stages(news) == {ids[0]: None, ids[1]: 30}
    assert smtp_sink.received == []
    assert remind_all(news, now) == {("news", "sent"): 2}
    assert [len(smtp_sink.to(f"p{i}@example.com")) for i in (0, 1)] == [1, 1]
    assert remind_all(news, now) == {}
    assert stages(news) == {ids[0]: 30, ids[1]: 7}
    statuses = [(m.subject_id, m.status) for m in _messages(news) if m.run_id != "seed"]
    assert sorted(statuses) == sorted(
        [(ids[0], "deferred"), (ids[1], "deferred"), (ids[0], "sent"), (ids[1], "sent")]
    )
    # two connections answer in either order: each deferral is audited with its own code
    codes = sorted(e.detail["smtp_code"] for e in audit_entries(news, "email.deferred"))
    assert codes == [450, 451]
    verify_audit(news)


def _sent(subject_id: int, stage: int) -> EmailMessage:
    with_id = mail.new_message_id()
    return EmailMessage(
        message_id=with_id,
        subject_id=subject_id,
        purpose_id=1,
        kind="renewal_reminder",
        stage=stage,
        status="sent",
        run_id="seed",
        created_at=utcnow(),
        sent_at=utcnow(),
    )


@pytest.mark.parametrize("stage", ["data", "rcpt"])
def test_a_5xx_suppresses_the_address_for_good(news, smtp_sink: SmtpSink, stage: str) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = seed_subjects(news, 2)
    give(news, ids, "news", now + 5 * DAY)
    smtp_sink.script("p0@example.com", "550 5.1.1 <p0@example.com>: no such user", stage=stage)
    assert remind_all(news, now) == {("news", "bounced"): 1, ("news", "sent"): 1}
    assert count(news, EmailSuppression) == 1
    [entry] = audit_entries(news, "email.bounced")
    assert entry.detail["suppressed"] is True and "p0@" not in str(entry.detail)
    # The address is never mailed again: not at the next stage, nor after a renewal.
    assert remind_all(news, now + 4 * DAY + DAY / 2) == {
        ("news", "suppressed"): 1,
        ("news", "sent"): 1,
    }
    with db.session_scope(news) as s:
        lifecycle.renew(s, "p0", "news", Actor())
        valid_until = s.exec(select(Consent.valid_until).where(Consent.subject_id == ids[0])).one()
    assert remind_all(news, valid_until - 2 * DAY) == {("news", "suppressed"): 1}
    assert smtp_sink.to("p0@example.com") == []
    assert count(news, EmailMessage, EmailMessage.subject_id == ids[0]) == 1


def test_smtp_down_fails_the_batch_and_marks_nothing_sent(news, smtp_down: int) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = seed_subjects(news, 3)
    give(news, ids, "news", now + 5 * DAY)
    with mail.Mailer() as m, pytest.raises(mail.MailUnavailable, match="cannot connect"):
        sweeps.remind_batch(sweeps.SweepContext(now, mailer=m, stages=STAGES, engine=news), 10, 0)
    assert [m.status for m in _messages(news)] == ["deferred"] * 3
    assert count(news, EmailMessage, EmailMessage.status == "sent") == 0
    assert set(stages(news).values()) == {None}  # all due again
    assert len(audit_entries(news, "email.deferred")) == 3
    assert sweeps.transient(mail.MailUnavailable("down"))
    verify_audit(news)


def test_a_crash_between_send_and_record_is_released_after_the_lease(  # type: ignore[no-untyped-def]
    news, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    ids = seed_subjects(news, 2)
    give(news, ids, "news", now + 5 * DAY)

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed between send and record")

    monkeypatch.setattr(claims, "record_results", crash)
    with pytest.raises(SystemExit):
        remind_all(news, now)
    monkeypatch.undo()
    assert [m.status for m in _messages(news)] == ["claimed", "claimed"]
    assert len(smtp_sink.received) == 2
    # A re-run within the lease sends nothing again.
    assert remind_all(news, now) == {}
    ctx = sweeps.SweepContext(now, engine=news)
    assert sweeps.release_stale_claims(ctx, [mail.Kind.RENEWAL_REMINDER]).counts == {}
    # After the lease the claims count as not sent (outcome unknown): due again, sent again.
    released = sweeps.release_stale_claims(
        sweeps.SweepContext(now, run_id="r2", engine=news),
        [mail.Kind.RENEWAL_REMINDER],
        lease=timedelta(0),
    )
    assert released.counts == {("news", "claims_released"): 2}
    assert set(stages(news).values()) == {None}
    assert [e.run_id for e in audit_entries(news, "email.claim_expired")] == ["r2", "r2"]
    assert remind_all(news, now) == {("news", "sent"): 2}
    assert len(smtp_sink.received) == 4  # the documented at-least-once window
    verify_audit(news)


def test_dry_run_reports_exactly_and_changes_nothing(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = seed_subjects(news, 6)
    no_email = seed_subjects(news, 1, prefix="q", email=False)
    give(news, ids + no_email, "news", [now + (i + 1) * 4 * DAY for i in range(7)])
    with db.session_scope(news) as s:
        hashed = mail.address_hash(instance_secret(s), "P2@example.com")
        s.add(EmailSuppression(address_hash=hashed, reason="complaint"))
    before = row_counts(news)
    preview = remind_all(news, now, dry_run=True, size=2)
    assert row_counts(news) == before and smtp_sink.received == []
    real = remind_all(news, now, size=2)
    assert (
        preview
        == real
        == {
            ("news", "sent"): 5,
            ("news", "suppressed"): 1,
            ("news", "no_email"): 1,
        }
    )


def test_limit_and_purposes(news, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with db.session_scope(news) as s:
        purposes.add(s, "ads", title="Ads", validity_days=30)
    ids = seed_subjects(news, 5)
    give(news, ids, "news", now + 5 * DAY)
    give(news, ids, "ads", now + 5 * DAY)
    with mail.Mailer() as m:
        for batch in sweeps.drain(
            lambda size, cursor: sweeps.remind_batch(
                sweeps.SweepContext(now, mailer=m, stages=STAGES, purposes=("ads",), engine=news),
                size,
                cursor,
            ),
            batch_size=2,
            limit=3,
        ):
            assert batch.seen <= 2
    assert {(r.message["Subject"]) for r in smtp_sink.received} == {
        # Dates through Babel in the recipient's language (issue 9), no longer ISO digits.
        'Your consent for "Ads" ends on ' + i18n.format_date(now + 5 * DAY, "en")
    }
    assert len(smtp_sink.received) == 3


def test_parse_stages() -> None:
    assert sweeps.parse_stages("30, 7,1") == (1, 7, 30)
    assert sweeps.parse_stages([14, 3]) == (3, 14)
    for bad in ("", "a,b", "0", [-1]):
        with pytest.raises(ValueError):
            sweeps.parse_stages(bad)

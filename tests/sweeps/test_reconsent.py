"""Re-consent after a material revision, as plain batch functions, on both databases."""

from __future__ import annotations

import functools
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import select

from consentflow import db, lifecycle, links, mail, purposes, sweeps, systems
from consentflow.lifecycle import Actor
from consentflow.links import LinkAction
from consentflow.models import Consent, ConsentRequest, Delivery, EmailMessage, utcnow
from tests.support.seeding import (
    audit_entries,
    count,
    give,
    row_counts,
    seed_subjects,
    verify_audit,
)
from tests.support.smtp import SmtpSink

DAY = timedelta(days=1)


@pytest.fixture
def profiled(engine):  # type: ignore[no-untyped-def]
    """Five subjects with a given "profiling" consent on version 1; crm subscribes to it."""
    with db.session_scope(engine) as s:
        purposes.add(s, "profiling", title="Profiling", validity_days=365)
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "crm", ["profiling"], webhook_url="https://crm.example.com/hooks")
    ids = seed_subjects(engine, 5)
    give(engine, ids, "profiling", utcnow() + 200 * DAY)
    give(engine, ids, "news", utcnow() + 200 * DAY)
    return engine


def revise(engine, key: str, *, material: bool, title: str) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        purposes.revise(s, key, material=material, title=title)


def run(engine, as_of, *, dry_run: bool = False, size: int = 50, **kw):  # type: ignore[no-untyped-def]
    """The three steps of the flow, in its order: resend, open (and email), enforce deadlines."""
    total: sweeps.Counts = Counter()
    with mail.Mailer() as m:
        ctx = sweeps.SweepContext(
            as_of,
            mailer=None if dry_run else m,
            reconsent_deadline_days=30,
            dry_run=dry_run,
            engine=engine,
            **kw,
        )
        steps = (
            sweeps.reconsent_email_batch,
            sweeps.reconsent_open_batch,
            sweeps.reconsent_deadline_batch,
        )
        for sweep in steps:
            step = functools.partial(sweep, ctx)
            for batch in sweeps.drain(step, batch_size=size):
                total.update(batch.counts)
    return total


def states(engine, key: str = "profiling") -> dict[int, tuple[str, int]]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        pid = purposes.get(s, key).id
        rows = s.exec(
            select(Consent.subject_id, Consent.state, Consent.purpose_version).where(
                Consent.purpose_id == pid
            )
        ).all()
    return {sid: (state, v) for sid, state, v in rows}


def test_editorial_revisions_ask_nobody(profiled, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    revise(profiled, "profiling", material=False, title="Profiling (typo fixed)")
    assert run(profiled, utcnow()) == {}
    assert count(profiled, ConsentRequest) == 0 and smtp_sink.received == []


def test_material_revision_asks_once_then_invalidates_at_the_deadline(  # type: ignore[no-untyped-def]
    profiled, smtp_sink: SmtpSink
) -> None:
    now = utcnow()
    revise(profiled, "profiling", material=True, title="Profiling, now with partners")
    with db.session_scope(profiled) as s:
        lifecycle.revoke(s, "p4", "profiling", Actor())  # withdrawn: nothing to ask
    assert run(profiled, now, run_id="r1") == {
        ("profiling", "requested"): 4,
        ("profiling", "sent"): 4,
    }
    assert run(profiled, now) == {}  # once per consent
    assert count(profiled, ConsentRequest) == 4
    with db.session_scope(profiled) as s:
        [deadline] = set(s.exec(select(ConsentRequest.deadline)).all())
    assert deadline is not None
    assert timedelta(days=30) <= deadline - now <= timedelta(days=30, minutes=1)
    opened = audit_entries(profiled, "request.opened")
    assert len(opened) == 4 and {e.run_id for e in opened} == {"r1"}
    assert opened[0].detail["purpose_version"] == 2 and opened[0].detail["consent_version"] == 1

    # p0 confirms by renewing on the new version; p1 revokes; p2 and p3 say nothing.
    with db.session_scope(profiled) as s:
        lifecycle.renew(s, "p0", "profiling", Actor())
        lifecycle.revoke(s, "p1", "profiling", Actor())
    assert run(profiled, now + 29 * DAY) == {}  # before the deadline
    deliveries_before = count(profiled, Delivery)
    assert run(profiled, now + 31 * DAY, run_id="r2") == {
        ("profiling", "invalidated"): 2,
        ("profiling", "webhooks_enqueued"): 2,
        ("profiling", "lapsed"): 2,
    }
    assert states(profiled) == {
        1: ("given", 2),
        2: ("withdrawn", 1),
        3: ("invalidated", 1),
        4: ("invalidated", 1),
        5: ("withdrawn", 1),
    }
    assert states(profiled, "news") == {i: ("given", 1) for i in range(1, 6)}  # untouched
    assert count(profiled, Delivery) == deliveries_before + 2
    with db.session_scope(profiled) as s:
        statuses = dict(s.exec(select(ConsentRequest.subject_id, ConsentRequest.status)).all())
    assert statuses == {1: "answered", 2: "answered", 3: "lapsed", 4: "lapsed"}
    assert {e.run_id for e in audit_entries(profiled, "consent.invalidate")} == {"r2"}
    assert run(profiled, now + 40 * DAY) == {}
    verify_audit(profiled)


def test_a_second_material_revision_asks_again(profiled, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    revise(profiled, "profiling", material=True, title="v2")
    run(profiled, now)
    with db.session_scope(profiled) as s:
        lifecycle.renew(s, "p0", "profiling", Actor())  # now on v2
    revise(profiled, "profiling", material=True, title="v3")
    # p0 (on v2) is asked about v3; the others still have their v2 request open.
    assert run(profiled, now) == {("profiling", "requested"): 1, ("profiling", "sent"): 1}
    assert len(smtp_sink.to("p0@example.com")) == 2


def test_the_reconsent_email(profiled, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    revise(profiled, "profiling", material=True, title="Profiling & partners")
    run(profiled, utcnow(), purposes=("profiling",))
    got = smtp_sink.to("p0@example.com")[0]
    # email.policy.SMTP folds a subject of 70-77 characters onto a line of its own
    # ("Subject:" CRLF SP "We changed..."): the unfolded value starts with that folding space.
    assert got.message["Subject"].lstrip(" ").startswith('We changed "Profiling & partners"')
    text = got.part("plain").splitlines()
    grant = text[text.index("Read the new terms and confirm:") + 1]
    revoke = text[text.index("Or withdraw your consent now:") + 1]
    assert got.message["List-Unsubscribe"] == f"<{revoke}>"
    assert "Profiling &amp; partners" in got.part("html")
    with db.session_scope(profiled) as s:
        assert links.verify(s, grant.rsplit("/", 1)[1], LinkAction.GRANT).subject_id == 1
        assert links.verify(s, revoke.rsplit("/", 1)[1], LinkAction.REVOKE).purpose_id == 1
        [message] = s.exec(select(EmailMessage).where(EmailMessage.subject_id == 1)).all()
    assert message.kind == "reconsent_request" and message.request_id is not None
    assert message.message_id == got.message["Message-ID"]


def test_a_deferred_reconsent_email_is_retried(profiled, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    revise(profiled, "profiling", material=True, title="v2")
    smtp_sink.script("p2@example.com", "450 4.2.0 mailbox busy")
    now = utcnow()
    assert run(profiled, now) == {
        ("profiling", "requested"): 5,
        ("profiling", "sent"): 4,
        ("profiling", "deferred"): 1,
    }
    assert run(profiled, now) == {("profiling", "sent"): 1}
    assert len(smtp_sink.to("p2@example.com")) == 1
    assert count(profiled, ConsentRequest) == 5


def test_dry_run(profiled, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    revise(profiled, "profiling", material=True, title="v2")
    before = row_counts(profiled)
    preview = run(profiled, now, dry_run=True, size=2)
    assert row_counts(profiled) == before and smtp_sink.received == []
    assert preview == run(profiled, now, size=2)
    preview = run(profiled, now + 31 * DAY, dry_run=True)
    assert preview == {
        ("profiling", "invalidated"): 5,
        ("profiling", "webhooks_enqueued"): 5,
        ("profiling", "lapsed"): 5,
    }
    assert run(profiled, now + 31 * DAY) == preview

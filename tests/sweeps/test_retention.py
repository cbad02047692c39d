"""The retention sweep as plain batch functions, on both databases: each kind goes exactly past
its cut-off and nothing younger does, what the claim protocol and the chain still need stays,
and every real run leaves one ``retention.swept`` entry the integrity check can rely on."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import (
    audit,
    db,
    erasure,
    integrity,
    lifecycle,
    purposes,
    settings,
    sweeps,
    systems,
    tokens,
)
from consentflow.errors import Conflict
from consentflow.lifecycle import Actor
from consentflow.models import (
    ActorType,
    Channel,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    DeliveryAttempt,
    EmailMessage,
    Subject,
    WebSession,
    utcnow,
)
from consentflow.sweeps import retention
from consentflow.timeutil import iso_z
from tests.support.seeding import audit_entries, row_counts, seed_subjects

US = timedelta(microseconds=1)
DAY = timedelta(days=1)
EVIDENCE = {"ip": "192.0.2.7", "user_agent": "retention-test"}


@pytest.fixture
def retain(monkeypatch):  # type: ignore[no-untyped-def]
    """Set the retention days per kind (every kind not named: 0, kept forever)."""

    def set_days(**days: int) -> None:
        for kind in retention.KINDS:
            monkeypatch.setenv(f"CONSENTFLOW_RETENTION_{kind.upper()}_DAYS", str(days.get(kind, 0)))
        settings.get_settings.cache_clear()

    yield set_days
    settings.get_settings.cache_clear()


@pytest.fixture
def ledger(engine):  # type: ignore[no-untyped-def]
    """news (crm subscribes with a webhook) and ten subjects p0..p9."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hooks")
    seed_subjects(engine, 10)
    return engine


def act(engine, change, who: str) -> datetime:  # type: ignore[no-untyped-def]
    """One consent change with evidence; when it was recorded."""
    with db.session_scope(engine) as s:
        done = change(s, who, "news", Actor(evidence=EVIDENCE))
        return s.get_one(ConsentEvent, done.event_id).recorded_at


def sweep_all(engine, as_of: datetime, size: int = 2, run_id: str | None = None) -> Counter:  # type: ignore[no-untyped-def,type-arg]
    """A real run as the flow makes it: refuse a broken record, drain every kind, record."""
    ctx = sweeps.SweepContext(as_of=as_of, engine=engine, run_id=run_id)
    retention.require_intact(ctx)
    total: sweeps.Counts = Counter()
    for fn in retention.BATCHES:
        for batch in sweeps.drain(lambda n, c: fn(ctx, n, c), batch_size=size):  # noqa: B023
            total.update(batch.counts)
    total.update(retention.record_sweep(ctx, total).counts)
    return total


def pruned(counts: Counter) -> dict[str, int]:  # type: ignore[type-arg]
    return {o.removesuffix("_pruned"): n for (_, o), n in counts.items() if n}


def swept(engine) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    entries = audit_entries(engine, retention.ACTION)
    assert entries, "no retention.swept entry"
    return entries[-1].detail


def record_intact(engine) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine, readonly=True) as s:
        assert audit.verify(s).ok
        assert integrity.verify_record(s) == []


def test_evidence_goes_past_its_cutoff_and_the_chain_still_verifies(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain(evidence=10)
    act(ledger, lifecycle.grant, "p0")
    act(ledger, lifecycle.revoke, "p0")  # both p0 events: old, not in force
    p1_grant = act(ledger, lifecycle.grant, "p1")  # old, but the grant of a consent in force
    cut = act(ledger, lifecycle.grant, "p2")  # exactly at the cut-off: kept
    act(ledger, lifecycle.revoke, "p2")  # younger
    as_of = cut + 10 * DAY

    preview = retention.preview_retention(sweeps.SweepContext(as_of=as_of, engine=ledger))
    assert pruned(sweep_all(ledger, as_of, run_id="r-1")) == {"evidence": 2}
    assert pruned(preview.counts) == {"evidence": 2}
    with db.session_scope(ledger, readonly=True) as s:
        kept = s.exec(select(ConsentEvent).order_by(col(ConsentEvent.recorded_at))).all()
    assert [e.evidence is not None for e in kept] == [False, False, True, True, True]
    detail = swept(ledger)
    assert detail["cutoffs"]["evidence"] == detail["evidence_before"] == iso_z(cut)
    assert detail["counts"] == {
        "sessions": 0, "attempts": 0, "evidence": 2, "emails": 0, "requests": 0
    }  # fmt: skip
    assert detail["days"]["evidence"] == 10 and detail["cutoffs"]["emails"] is None
    [entry] = audit_entries(ledger, retention.ACTION)
    assert entry.run_id == "r-1" and entry.subject_ref is None
    assert "192.0.2.7" not in str(entry.detail)
    record_intact(ledger)

    # p1 withdraws: its grant is no longer in force. A later run with an earlier cut-off prunes
    # it, and evidence_before never moves back (the first run's events stay accepted).
    act(ledger, lifecycle.revoke, "p1")
    assert pruned(sweep_all(ledger, p1_grant + US + 10 * DAY)) == {"evidence": 1}
    assert swept(ledger)["evidence_before"] == iso_z(cut)
    assert pruned(sweep_all(ledger, as_of)) == {}  # nothing left: the mark is carried forward
    assert swept(ledger)["evidence_before"] == iso_z(cut)
    record_intact(ledger)


def _set(engine, model, row_id, **values) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        s.execute(update(model).where(col(model.id) == row_id).values(**values))


def _add(engine, *rows) -> list[int]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine) as s:
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _ids(engine, model) -> set[int]:  # type: ignore[no-untyped-def]
    with db.session_scope(engine, readonly=True) as s:
        return set(s.exec(select(model.id)).all())


# One world with a row on each side of every cut-off, and what must stay regardless.
def test_each_kind_goes_exactly_past_its_cutoff(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain(sessions=1, attempts=30, emails=60, requests=90)
    for who in ("p0", "p1", "p2"):
        act(ledger, lifecycle.grant, who)
    p0_revoked = act(ledger, lifecycle.revoke, "p0")
    act(ledger, lifecycle.revoke, "p1")
    act(ledger, lifecycle.revoke, "p2")
    act(ledger, lifecycle.grant, "p3")  # given: its reminders are in their current period
    with db.session_scope(ledger) as s:
        for who in ("p4", "p5", "p6", "p7", "p8"):
            lifecycle.request(s, who, "news", Actor())
        requests = dict(
            s.exec(
                select(Subject.external_id, ConsentRequest.id).join(
                    Subject, col(Subject.id) == ConsentRequest.subject_id
                )
            ).all()
        )
        subject = dict(s.exec(select(Subject.external_id, Subject.id)).all())
        news = purposes.get(s, "news").id
        deliveries = [d.id for d in s.exec(select(Delivery).order_by(col(Delivery.id))).all()]
        token, _ = tokens.create(s, "ops", "admin")
    as_of = utcnow() + 100 * DAY
    cut = {kind: as_of - retention.days(kind) * DAY for kind in ("sessions", "attempts",
                                                                 "emails", "requests")}  # fmt: skip

    # attempts: of a delivered, a dead and a pending delivery, one each side of the cut-off
    _set(ledger, Delivery, deliveries[0], state="delivered")
    _set(ledger, Delivery, deliveries[1], state="dead")
    attempts = {
        (d, side): DeliveryAttempt(delivery_id=d, attempt=1 + (side == "at"), status_code=500,
                                   started_at=cut["attempts"] - (US if side == "old" else 0 * US))
        for d in deliveries for side in ("old", "at")
    }  # fmt: skip
    _add(ledger, *attempts.values())
    gone_attempts = {attempts[(d, "old")].id for d in deliveries[:2]}

    # requests: p4 open; p5 answered long ago; p6 lapsed long ago, its follow-up still claimed;
    # p7 closed exactly at the cut-off; p8 closed long ago, its follow-up not yet past its own
    for who, closed in (("p5", US), ("p6", US), ("p7", 0 * US), ("p8", US)):
        _set(ledger, ConsentRequest, requests[who], status="answered",
             closed_at=cut["requests"] - closed)  # fmt: skip

    def mail(n: int, who: int, kind: str, status: str, at: datetime, request: str | None = None):  # type: ignore[no-untyped-def]
        return EmailMessage(
            message_id=f"<m{n}@test>",
            subject_id=subject[f"p{who}"],
            purpose_id=news,
            kind=kind,
            status=status,
            created_at=at,
            request_id=None if request is None else requests[request],
        )

    old, at = cut["emails"] - US, cut["emails"]
    emails = [
        mail(1, 3, "renewal_reminder", "sent", old),  # current period of a given consent: kept
        mail(2, 0, "renewal_reminder", "sent", p0_revoked - DAY),  # an earlier period: goes
        mail(3, 1, "preference_link", "bounced", old),  # goes
        mail(4, 1, "preference_link", "claimed", old),  # outcome unknown: kept
        mail(5, 1, "preference_link", "sent", at),  # at the cut-off: kept
        mail(6, 4, "collection_followup", "sent", old, "p4"),  # open request: kept
        mail(7, 5, "collection_followup", "sent", old, "p5"),  # goes, then its request
        mail(8, 6, "collection_followup", "claimed", old, "p6"),  # kept, and so its request
        mail(9, 8, "collection_followup", "sent", at, "p8"),  # kept, and so its request
    ]
    _add(ledger, *emails)

    # sessions: expired and signed out before the cut-off go; at the cut-off and live stay
    def web(n: int, expires: datetime, revoked: datetime | None = None) -> WebSession:
        return WebSession(
            id_hash=f"{n:064d}",
            token_id=token.id,
            created_at=expires - DAY,
            expires_at=expires,
            last_seen_at=expires - DAY,
            revoked_at=revoked,
        )

    sessions = [
        web(1, cut["sessions"] - US),
        web(2, as_of + DAY, revoked=cut["sessions"] - US),
        web(3, cut["sessions"]),
        web(4, as_of + DAY),
    ]
    _add(ledger, *sessions)

    before = {m: _ids(ledger, m) for m in (DeliveryAttempt, EmailMessage, ConsentRequest)}
    preview = retention.preview_retention(sweeps.SweepContext(as_of=as_of, engine=ledger))
    counts = sweep_all(ledger, as_of, size=2)
    expected = {"sessions": 2, "attempts": 2, "emails": 3, "requests": 1}
    assert pruned(counts) == pruned(preview.counts) == expected
    assert swept(ledger)["counts"] == {"evidence": 0} | expected
    assert before[DeliveryAttempt] - _ids(ledger, DeliveryAttempt) == gone_attempts
    assert before[EmailMessage] - _ids(ledger, EmailMessage) == {emails[i].id for i in (1, 2, 6)}
    assert before[ConsentRequest] - _ids(ledger, ConsentRequest) == {requests["p5"]}
    assert _ids(ledger, WebSession) == {sessions[2].id, sessions[3].id}
    assert pruned(sweep_all(ledger, as_of)) == {}  # nothing more
    record_intact(ledger)


def test_zero_keeps_every_kind_forever(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain()
    act(ledger, lifecycle.grant, "p0")
    act(ledger, lifecycle.revoke, "p0")
    with db.session_scope(ledger) as s:
        s.execute(update(Delivery).values(state="dead"))
        [delivery] = s.exec(select(Delivery.id)).all()
        s.add(DeliveryAttempt(delivery_id=delivery, attempt=1, started_at=utcnow() - 9000 * DAY))
    before = row_counts(ledger)
    assert pruned(sweep_all(ledger, utcnow() + 30000 * DAY)) == {}
    assert row_counts(ledger) == before | {"audit_entry": before["audit_entry"] + 1}
    detail = swept(ledger)
    assert set(detail["cutoffs"].values()) == {None} and "evidence_before" not in detail


def test_batches_page_through_every_due_row(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain(sessions=1)
    with db.session_scope(ledger) as s:
        token, _ = tokens.create(s, "ops", "admin")
        s.add_all(
            WebSession(id_hash=f"{n:064d}", token_id=token.id, expires_at=utcnow() - 2 * DAY)
            for n in range(5)
        )
    ctx = sweeps.SweepContext(as_of=utcnow(), engine=ledger)
    batches = list(
        sweeps.drain(lambda n, c: retention.prune_sessions_batch(ctx, n, c), batch_size=2)
    )
    assert [(b.seen, b.counts[("-", "sessions_pruned")]) for b in batches] == [
        (2, 2), (2, 2), (1, 1)
    ]  # fmt: skip
    assert _ids(ledger, WebSession) == set()
    with pytest.raises(ValueError, match="preview"):
        retention.prune_sessions_batch(sweeps.SweepContext(as_of=utcnow(), dry_run=True), 10)


def test_a_broken_chain_is_refused_and_nothing_changes(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain(evidence=1, sessions=1, attempts=1, emails=1, requests=1)
    act(ledger, lifecycle.grant, "p0")
    act(ledger, lifecycle.revoke, "p0")
    with db.session_scope(ledger) as s:
        s.execute(
            update(ConsentEvent).where(col(ConsentEvent.action) == "grant").values(reason="x")
        )
    before = row_counts(ledger) | {"evidence": _evidence(ledger)}
    with pytest.raises(Conflict, match=r"^refusing to apply retention: audit verify fails: .*"):
        sweep_all(ledger, utcnow() + 10 * DAY)
    assert row_counts(ledger) | {"evidence": _evidence(ledger)} == before
    assert audit_entries(ledger, retention.ACTION) == []


def _evidence(engine) -> int:  # type: ignore[no-untyped-def]
    with db.session_scope(engine, readonly=True) as s:
        return len(
            s.exec(select(ConsentEvent.id).where(col(ConsentEvent.evidence).is_not(None))).all()
        )


def test_a_run_shreds_the_keys_of_erased_subjects_once_settled(ledger, retain) -> None:  # type: ignore[no-untyped-def]
    retain()
    act(ledger, lifecycle.grant, "p0")
    with db.session_scope(ledger) as s:
        erasure.erase(
            s, "p0", Actor(ActorType.AGENT, Channel.SUPPORT, name="dpo"), reason="art. 17"
        )
    assert pruned(sweep_all(ledger, utcnow())) == {}  # its webhooks are still pending
    assert swept(ledger)["keys_shredded"] == 0
    with db.session_scope(ledger) as s:
        s.execute(update(Delivery).values(state="delivered"))
    assert pruned(sweep_all(ledger, utcnow())) == {"keys_shredded": 1}
    assert swept(ledger)["keys_shredded"] == 1
    assert len(audit_entries(ledger, "subject.shredded")) == 1
    record_intact(ledger)

"""The expiry sweep as plain batch functions, on both databases."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlmodel import select

from consentflow import db, lifecycle, purposes, sweeps, systems
from consentflow.models import Consent, ConsentEvent, Delivery, State, utcnow
from tests.support.seeding import (
    audit_entries,
    count,
    give,
    row_counts,
    seed_subjects,
    verify_audit,
)

DAY = timedelta(days=1)


@pytest.fixture
def population(engine):  # type: ignore[no-untyped-def]
    """news: 7 consents ended at various times, 3 still valid; ads: 2 ended; crm subscribes to
    news with a webhook."""
    now = utcnow()
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        purposes.add(s, "ads", title="Ads", validity_days=90)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hooks")
    ids = seed_subjects(engine, 10)
    give(engine, ids, "news", [now - (i + 1) * DAY for i in range(7)] + [now + DAY] * 3)
    give(engine, ids[:2], "ads", now - DAY / 2)
    return engine, now


def sweep(engine, as_of, size: int = 3, limit: int | None = None, **kw):  # type: ignore[no-untyped-def]
    total: sweeps.Counts = Counter()
    ctx = sweeps.SweepContext(as_of=as_of, engine=engine, **kw)
    for batch in sweeps.drain(
        lambda size, cursor: sweeps.expire_batch(ctx, size, cursor),
        batch_size=size,
        limit=limit,
    ):
        total.update(batch.counts)
    return total


def test_expiry_records_when_it_took_effect_and_when_it_was_recorded(population) -> None:  # type: ignore[no-untyped-def]
    engine, now = population
    before = utcnow()
    counts = sweep(engine, now, run_id="run-7")
    assert counts == {
        ("news", "expired"): 7,
        ("news", "webhooks_enqueued"): 7,
        ("ads", "expired"): 2,
    }
    with db.session_scope(engine) as s:
        events = s.exec(select(ConsentEvent).where(ConsentEvent.action == "expire")).all()
        assert len(events) == 9
        for e in events:
            assert e.occurred_at == e.valid_until and e.occurred_at is not None
            assert e.occurred_at <= now <= before <= e.recorded_at
            assert e.run_id == "run-7" and e.actor_type == "system"
        assert s.exec(select(func.count()).select_from(Delivery)).one() == 7
    entries = audit_entries(engine, "consent.expire")
    assert len(entries) == 9 and {e.run_id for e in entries} == {"run-7"}
    assert sweep(engine, now) == {}  # idempotent
    assert count(engine, Consent, Consent.state == State.GIVEN.value) == 3
    verify_audit(engine)


def test_as_of_limit_and_purposes(population) -> None:  # type: ignore[no-untyped-def]
    engine, now = population
    assert sweep(engine, now - 5 * DAY) == {  # only those ended 5 or more days ago
        ("news", "expired"): 3,
        ("news", "webhooks_enqueued"): 3,
    }
    assert sweep(engine, now, purposes=("ads",)) == {("ads", "expired"): 2}
    assert sweep(engine, now, size=3, limit=2) == {
        ("news", "expired"): 2,
        ("news", "webhooks_enqueued"): 2,
    }
    assert count(engine, Consent, Consent.state == State.EXPIRED.value) == 7


def test_preview_is_exact_and_writes_nothing(population) -> None:  # type: ignore[no-untyped-def]
    engine, now = population
    before = row_counts(engine)
    previews = [
        sweeps.preview_expiry(sweeps.SweepContext(now, engine=engine)).counts,
        sweeps.preview_expiry(sweeps.SweepContext(now, engine=engine), limit=4).counts,
        sweeps.preview_expiry(sweeps.SweepContext(now, purposes=("ads",), engine=engine)).counts,
    ]
    assert row_counts(engine) == before
    assert previews[0] == {
        ("news", "expired"): 7,
        ("news", "webhooks_enqueued"): 7,
        ("ads", "expired"): 2,
    }
    # The same order as the sweep: the four whose validity ended first.
    assert previews[1] == sweep(engine, now, limit=4)
    assert previews[2] == sweep(engine, now, purposes=("ads",))


def test_crash_mid_sweep_then_rerun_expires_each_once(population, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, now = population
    real = lifecycle.expire_due
    calls = []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker killed in batch 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "expire_due", flaky)
    with pytest.raises(RuntimeError, match="batch 3"):
        sweep(engine, now, size=2)
    assert count(engine, Consent, Consent.state == State.EXPIRED.value) == 4  # 2 batches kept
    monkeypatch.setattr(lifecycle, "expire_due", real)
    assert sum(sweep(engine, now, size=2).values()) == 5 + 3  # the rest, webhooks included
    with db.session_scope(engine) as s:
        per_consent = s.exec(
            select(ConsentEvent.subject_id, ConsentEvent.purpose_id, func.count())
            .where(ConsentEvent.action == "expire")
            .group_by(ConsentEvent.subject_id, ConsentEvent.purpose_id)
        ).all()
    assert len(per_consent) == 9 and {n for *_, n in per_consent} == {1}
    assert count(engine, Delivery) == 7
    verify_audit(engine)


def test_transient_errors_are_retried_others_are_not() -> None:
    from sqlalchemy.exc import OperationalError

    assert sweeps.transient(OperationalError("SELECT 1", {}, Exception("deadlock detected")))
    assert sweeps.transient(TimeoutError())
    assert not sweeps.transient(RuntimeError("bug"))
    assert not sweeps.transient(lifecycle.TransitionNotAllowed("no"))


def test_a_batch_writes_what_the_single_path_writes_with_time_ordered_ids(engine) -> None:  # type: ignore[no-untyped-def]
    """Two identical consents, one expired by ``lifecycle.expire`` and then one by a sweep
    batch: the same history, outbox and audit rows but for the subject, the times and the ids;
    every event and webhook id is a UUIDv7 (RFC 9562), the later one sorting later."""
    import orjson

    now = utcnow()
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hooks")
    single, batch = seed_subjects(engine, 2)  # external ids p0 and p1
    give(engine, [single, batch], "news", now - DAY)
    with db.session_scope(engine) as s:
        lifecycle.expire(s, "p0", "news", as_of=now)
    assert sweep(engine, now) == {("news", "expired"): 1, ("news", "webhooks_enqueued"): 1}

    with db.session_scope(engine) as s:
        found = s.exec(select(ConsentEvent).where(ConsentEvent.action == "expire")).all()
        deliveries = {d.event_id: d for d in s.exec(select(Delivery)).all()}
    events = sorted(found, key=lambda e: e.subject_id != single)  # the single path's first
    entries = {e.detail["event_id"]: e for e in audit_entries(engine, "consent.expire")}

    def shape(event: ConsentEvent) -> tuple[object, ...]:
        delivery, entry = deliveries[event.id], entries[str(event.id)]
        body = orjson.loads(delivery.payload)
        assert body["data"].pop("subject") == ("p0" if event.subject_id == single else "p1")
        assert body["data"].pop("event_id") == str(event.id) and body.pop("timestamp")
        detail = dict(entry.detail, event_id=None)
        assert event.id.version == 7 and delivery.webhook_id.startswith("msg_")
        fields = event.model_dump(exclude={"id", "subject_id", "recorded_at"})
        return (fields, body, delivery.event_type, delivery.state, detail, entry.purpose_key)

    assert shape(events[0]) == shape(events[1])
    # Made later, never sorting earlier: the milliseconds lead (random bits after them).
    first, then = (deliveries[e.id].webhook_id for e in events)
    assert events[0].id.int >> 80 <= events[1].id.int >> 80 and first[:16] <= then[:16]
    verify_audit(engine)

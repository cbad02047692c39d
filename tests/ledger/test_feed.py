"""The reconciliation feed: the withdrawals a system must honour, resumable from a cursor."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import db, feed, lifecycle, purposes, subjects, systems
from consentflow.errors import InvalidInput, NotFound
from consentflow.lifecycle import Actor
from consentflow.models import Action, Delivery, System, utcnow
from consentflow.views import FeedItemOut

DAY = timedelta(days=1)


def items(engine: Engine, system: str, cursor: int = 0, limit: int = 1000) -> list[feed.FeedItem]:
    with Session(engine) as s:
        return feed.withdrawals_since(s, system, cursor, limit)


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    """crm: news+offers (webhook); ads: offers; lab: research (no webhook). Withdrawals:
    alice/news revoked, bob/offers revoked, carol/news expired, dave/news invalidated,
    erin/research revoked; plus changes that withdraw nothing."""
    with db.session_scope(engine) as s:
        for key in ("news", "offers", "research"):
            purposes.add(s, key, title=key, validity_days=30)
        for name in ("alice", "bob", "carol", "dave", "erin"):
            subjects.add(s, name, email=f"{name}@example.com")
        systems.add(s, "crm", ["news", "offers"], webhook_url="https://crm.example.com/h")
        systems.add(s, "ads", ["offers"], webhook_url="https://ads.example.com/h")
        systems.add(s, "lab", ["research"])
    past = utcnow() - 40 * DAY
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.grant(s, "bob", "offers", Actor())
        lifecycle._single(s, Action.GRANT, "carol", "news", Actor(), now=past)
        lifecycle.grant(s, "dave", "news", Actor())
        lifecycle.grant(s, "erin", "research", Actor())
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
        lifecycle.refuse(s, "erin", "offers", Actor())
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "bob", "offers", Actor())
    with db.session_scope(engine) as s:
        assert [c.external_id for c in lifecycle.expire_due(s)] == ["carol"]
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="News v2")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())  # on v2: stays valid
    with db.session_scope(engine) as s:
        assert [c.external_id for c in lifecycle.invalidate_stale(s, "news")] == ["dave"]
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "erin", "research", Actor())
    return engine


def test_feed_lists_the_systems_withdrawals_in_cursor_order(ledger: Engine) -> None:
    got = items(ledger, "crm")
    assert [(i.subject, i.purpose, i.state, i.type) for i in got] == [
        ("alice", "news", "withdrawn", "consent.withdrawn"),
        ("bob", "offers", "withdrawn", "consent.withdrawn"),
        ("carol", "news", "expired", "consent.expired"),
        ("dave", "news", "invalidated", "consent.invalidated"),
    ]
    cursors = [i.cursor for i in got]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert [(i.subject, i.purpose) for i in items(ledger, "ads")] == [("bob", "offers")]
    assert [(i.subject, i.purpose) for i in items(ledger, "lab")] == [("erin", "research")]
    carol = got[2]
    with Session(ledger) as s:
        history = lifecycle.history(s, "carol")
    _, expired = history[-1]
    assert carol.effective_at == expired.occurred_at.isoformat().replace("+00:00", "Z")
    assert (carol.event_id, carol.sequence, carol.purpose_version) == (str(expired.id), 2, 1)


def test_feed_items_mirror_the_webhook_bodies(ledger: Engine) -> None:
    with Session(ledger) as s:
        rows = s.exec(
            select(Delivery.payload)
            .join(System, col(System.id) == Delivery.system_id)
            .where(System.name == "crm")
            .order_by(col(Delivery.id))
        ).all()
    bodies = [json.loads(p) for p in rows]
    fed = [FeedItemOut.of(i).model_dump(mode="json") for i in items(ledger, "crm")]
    assert [(f["type"], f["data"]) for f in fed] == [(b["type"], b["data"]) for b in bodies]
    assert all("@" not in json.dumps(f) for f in fed)


@pytest.mark.parametrize("page", [1, 2, 3])
def test_paging_from_a_cursor_has_no_gaps_or_repeats(ledger: Engine, page: int) -> None:
    everything = items(ledger, "crm")
    seen: list[feed.FeedItem] = []
    cursor = 0
    while True:
        batch = items(ledger, "crm", cursor, page)
        assert len(batch) <= page
        if not batch:
            break
        seen += batch
        cursor = batch[-1].cursor
    assert seen == everything
    assert items(ledger, "crm", cursor) == []


def test_resuming_sees_later_withdrawals_only(ledger: Engine) -> None:
    cursor = items(ledger, "crm")[-1].cursor
    with db.session_scope(ledger) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
        lifecycle.grant(s, "bob", "offers", Actor())
    new = items(ledger, "crm", cursor)
    assert [(i.subject, i.purpose, i.state) for i in new] == [("alice", "news", "withdrawn")]
    assert new[0].cursor > cursor
    assert new[0].purpose_version == 2


def test_feed_rejects_bad_requests(ledger: Engine) -> None:
    with pytest.raises(NotFound, match="unknown system 'nosuch'"):
        items(ledger, "nosuch")
    for cursor, limit in [(-1, 10), (0, 0), (0, 10001)]:
        with pytest.raises(InvalidInput):
            items(ledger, "crm", cursor, limit)
    assert len(items(ledger, "crm", 0, 10000)) == 4

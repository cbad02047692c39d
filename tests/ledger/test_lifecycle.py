"""The consent lifecycle: the rule table, what each change writes, batches, time travel.

Every test runs on SQLite and (when configured) PostgreSQL through the ``engine`` fixture. Changes
at a chosen instant go through ``lifecycle._single`` with ``now=``: the ledger's own single write
path, whose clock parameter exists so that validity periods can be exercised without waiting.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, lifecycle, purposes, subjects, systems
from consentflow.errors import NotFound, TransitionNotAllowed
from consentflow.lifecycle import RULES, Actor, Change
from consentflow.models import (
    Action,
    ActorType,
    AuditEntry,
    Channel,
    Consent,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    Purpose,
    State,
    Subject,
    System,
    metadata,
    utcnow,
)
from consentflow.views import ChangeOut

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


# ------------------------------------------------------------------------------------ helpers


def counts(engine: Engine) -> dict[str, int]:
    """Rows per table: what 'nothing changed' is checked against."""
    with Session(engine) as s:
        return {
            t.name: s.execute(sa_select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def act(
    s: Session,
    action: Action,
    external_id: str = "alice",
    key: str = "news",
    *,
    now: datetime | None = None,
    as_of: datetime | None = None,
    actor: Actor | None = None,
) -> Change:
    """One change at instant ``now`` through the ledger's single write path."""
    if actor is None:
        system = action in (Action.EXPIRE, Action.INVALIDATE)
        actor = lifecycle.system_actor() if system else Actor()
    return lifecycle._single(s, action, external_id, key, actor, now=now, as_of=as_of)


def add_purpose(engine: Engine, key: str = "news", validity_days: int = 30) -> None:
    with db.session_scope(engine) as s:
        purposes.add(s, key, title=key.title(), validity_days=validity_days)


def add_subjects(engine: Engine, *names: str) -> None:
    with db.session_scope(engine) as s:
        for name in names:
            subjects.add(s, name, email=f"{name}@example.com")


def revise(engine: Engine, key: str = "news", *, material: bool, **fields: Any) -> int:
    with db.session_scope(engine) as s:
        fields.setdefault("title", f"{key} {uuid.uuid4().hex[:6]}")
        return purposes.revise(s, key, material=material, **fields).version


def consent_row(engine: Engine, external_id: str = "alice", key: str = "news") -> Consent | None:
    with Session(engine) as s:
        return s.exec(
            select(Consent)
            .join(Subject, col(Subject.id) == Consent.subject_id)
            .join(Purpose, col(Purpose.id) == Consent.purpose_id)
            .where(Subject.external_id == external_id, Purpose.key == key)
        ).first()


def events(engine: Engine, external_id: str = "alice") -> list[ConsentEvent]:
    with Session(engine) as s:
        return [e for _, e in lifecycle.history(s, external_id)]


def event(engine: Engine, event_id: uuid.UUID) -> ConsentEvent:
    with Session(engine) as s:
        found = s.get(ConsentEvent, event_id)
        assert found is not None
        return found


def audit_for_event(engine: Engine, event_id: uuid.UUID) -> AuditEntry:
    with Session(engine) as s:
        found = [
            a
            for a in s.exec(
                select(AuditEntry)
                .where(col(AuditEntry.action).like("consent.%"))
                .order_by(col(AuditEntry.seq))
            )
            if a.detail.get("event_id") == str(event_id)
        ]
    assert len(found) == 1, found
    return found[0]


def deliveries(engine: Engine, event_id: uuid.UUID | None = None) -> list[tuple[str, Delivery]]:
    with Session(engine) as s:
        stmt = select(System.name, Delivery).join(System, col(System.id) == Delivery.system_id)
        if event_id is not None:
            stmt = stmt.where(Delivery.event_id == event_id)
        return [(n, d) for n, d in s.exec(stmt.order_by(col(System.name))).all()]


def verify_ok(engine: Engine) -> None:
    with Session(engine) as s:
        result = audit.verify(s)
    assert result.ok, result


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    """Purpose ``news`` (30 days), subject ``alice``."""
    add_purpose(engine, "news", 30)
    add_subjects(engine, "alice")
    return engine


# -------------------------------------------------------------------------------- rule table

ENDED = {None, "refused", "withdrawn", "expired", "invalidated"}
#: The README's table, written out here independently of ``lifecycle.RULES``.
README_TABLE: dict[Action, tuple[set[str | None], str]] = {
    Action.REQUEST: (ENDED, "requested"),
    Action.GRANT: (ENDED | {"requested"}, "given"),
    Action.REFUSE: ({None, "requested", "withdrawn", "expired", "invalidated"}, "refused"),
    Action.REVOKE: ({"given"}, "withdrawn"),
    Action.RENEW: ({"given"}, "given"),
    Action.EXPIRE: ({"given"}, "expired"),
    Action.INVALIDATE: ({"given"}, "invalidated"),
}
FROM_STATES: list[str | None] = [None, *(s.value for s in State)]


def test_rules_table_is_the_documented_one() -> None:
    for action, (allowed, to) in README_TABLE.items():
        got = {s.value if s else None for s in RULES[action].allowed}
        assert got == allowed, action
        assert RULES[action].to == to, action
    assert RULES[Action.IMPORT].allowed == frozenset({None})
    assert set(RULES) == set(Action)


def reach(engine: Engine, state: str | None, *, ended: bool = False) -> None:
    """Bring alice's news consent into ``state``; afterwards, whenever it is given, it is stale
    (a material revision superseded its version), and due (validity ended 10 days ago) if
    ``ended``, else still valid for 25 days."""
    t0 = utcnow() - 40 * DAY
    revised = False
    with db.session_scope(engine) as s:
        if state == "requested":
            act(s, Action.REQUEST, now=t0)
        elif state == "given":
            act(s, Action.GRANT, now=t0 if ended else utcnow() - 5 * DAY)
        elif state == "refused":
            act(s, Action.REFUSE, now=t0)
        elif state == "withdrawn":
            act(s, Action.GRANT, now=t0)
            act(s, Action.REVOKE, now=t0 + HOUR)
        elif state == "expired":
            act(s, Action.GRANT, now=t0)
            act(s, Action.EXPIRE, now=t0 + 35 * DAY)
    if state == "invalidated":
        with db.session_scope(engine) as s:
            act(s, Action.GRANT, now=t0)
        revise(engine, material=True)
        revised = True
        with db.session_scope(engine) as s:
            act(s, Action.INVALIDATE, now=t0 + DAY)
    if not revised:
        revise(engine, material=True)
    row = consent_row(engine)
    assert (row.state if row else None) == state


def apply(s: Session, action: Action) -> Change:
    """The public single form of ``action``, effective now."""
    if action is Action.EXPIRE:
        return lifecycle.expire(s, "alice", "news")
    fn = {
        Action.REQUEST: lifecycle.request,
        Action.GRANT: lifecycle.grant,
        Action.REFUSE: lifecycle.refuse,
        Action.REVOKE: lifecycle.revoke,
        Action.RENEW: lifecycle.renew,
        Action.INVALIDATE: lifecycle.invalidate,
    }[action]
    return fn(s, "alice", "news", Actor())


@pytest.mark.parametrize("from_state", FROM_STATES, ids=lambda s: s or "absent")
@pytest.mark.parametrize("action", list(README_TABLE), ids=str)
def test_every_action_from_every_state(
    ledger: Engine, action: Action, from_state: str | None
) -> None:
    reach(ledger, from_state, ended=action is Action.EXPIRE)
    allowed, to = README_TABLE[action]
    before = counts(ledger)
    if from_state in allowed:
        with db.session_scope(ledger) as s:
            change = apply(s, action)
        assert change.state == to
        assert (change.previous_state.value if change.previous_state else None) == from_state
        row = consent_row(ledger)
        assert row is not None and row.state == to and row.last_event_id == change.event_id
        after = counts(ledger)
        assert after["consent_event"] == before["consent_event"] + 1
        assert after["audit_entry"] == before["audit_entry"] + 1
    else:
        with pytest.raises(TransitionNotAllowed) as exc, db.session_scope(ledger) as s:
            apply(s, action)
        message = str(exc.value)
        assert f"cannot {action.value} consent of 'alice' for 'news'" in message
        assert (from_state or "absent") in message
        assert "\n" not in message
        assert counts(ledger) == before
    verify_ok(ledger)


def test_unknown_subject_or_purpose_is_not_found(ledger: Engine) -> None:
    before = counts(ledger)
    with pytest.raises(NotFound, match="unknown subject 'nobody'"), db.session_scope(ledger) as s:
        lifecycle.grant(s, "nobody", "news", Actor())
    with pytest.raises(NotFound, match="unknown purpose 'nothing'"), db.session_scope(ledger) as s:
        lifecycle.grant(s, "alice", "nothing", Actor())
    assert counts(ledger) == before


# ------------------------------------------------------------------------- what changes write


def test_grant_stamps_validity_from_the_current_version(ledger: Engine) -> None:
    assert revise(ledger, material=False, validity_days=90) == 2
    actor = Actor(
        ActorType.AGENT,
        Channel.SUPPORT,
        name="agent-smith",
        reason="phone call",
        evidence={"ticket": "T-1"},
    )
    with db.session_scope(ledger) as s:
        change = lifecycle.grant(s, "alice", "news", actor)
    assert change.purpose_version == 2
    assert change.occurred_at == change.recorded_at
    assert change.valid_until == change.occurred_at + 90 * DAY
    row = consent_row(ledger)
    assert row is not None
    assert (row.state, row.purpose_version) == ("given", 2)
    assert row.given_at == change.occurred_at
    assert row.valid_until == change.valid_until
    e = event(ledger, change.event_id)
    assert (e.action, e.state, e.previous_state, e.seq) == ("grant", "given", None, 1)
    assert (e.actor_type, e.actor, e.channel, e.reason) == (
        "agent",
        "agent-smith",
        "support",
        "phone call",
    )
    assert e.evidence == {"ticket": "T-1"}
    assert e.valid_until == change.valid_until and e.purpose_version == 2
    entry = audit_for_event(ledger, change.event_id)
    assert entry.action == "consent.grant" and entry.purpose_key == "news"
    assert entry.actor == "agent-smith" and entry.channel == "support"
    assert entry.detail["to"] == "given" and entry.detail["reason"] == "phone call"


def test_renew_restarts_validity_and_pins_the_current_version(ledger: Engine) -> None:
    t0 = utcnow() - 10 * DAY
    with db.session_scope(ledger) as s:
        granted = act(s, Action.GRANT, now=t0)
    assert granted.valid_until == t0 + 30 * DAY
    revise(ledger, material=False, validity_days=60)
    with db.session_scope(ledger) as s:
        renewed = lifecycle.renew(s, "alice", "news", Actor())
    assert renewed.purpose_version == 2
    assert renewed.valid_until == renewed.occurred_at + 60 * DAY
    row = consent_row(ledger)
    assert row is not None
    assert row.given_at == t0  # the consent was given then; renewing does not re-date it
    assert (row.state, row.purpose_version, row.valid_until) == ("given", 2, renewed.valid_until)


def test_expire_refused_while_valid(ledger: Engine) -> None:
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    before = counts(ledger)
    with pytest.raises(TransitionNotAllowed, match="not due") as exc, db.session_scope(ledger) as s:
        lifecycle.expire(s, "alice", "news")
    assert "'alice'" in str(exc.value) and "'news'" in str(exc.value)
    assert counts(ledger) == before


def test_expire_is_effective_at_the_validity_end(ledger: Engine) -> None:
    t0 = utcnow() - 45 * DAY
    with db.session_scope(ledger) as s:
        granted = act(s, Action.GRANT, now=t0)
    with db.session_scope(ledger) as s:
        expired = lifecycle.expire(s, "alice", "news")
    assert expired.state == "expired" and expired.previous_state == "given"
    assert expired.occurred_at == granted.valid_until == t0 + 30 * DAY
    assert expired.recorded_at > expired.occurred_at
    e = event(ledger, expired.event_id)
    assert e.occurred_at == granted.valid_until and e.recorded_at > e.occurred_at
    assert (e.actor_type, e.channel) == ("system", "system")
    row = consent_row(ledger)
    assert row is not None
    assert (row.state, row.given_at, row.valid_until) == ("expired", t0, granted.valid_until)


def test_expire_at_exactly_the_validity_end_is_due(ledger: Engine) -> None:
    t0 = utcnow() - 45 * DAY
    with db.session_scope(ledger) as s:
        granted = act(s, Action.GRANT, now=t0)
    assert granted.valid_until is not None
    with pytest.raises(TransitionNotAllowed), db.session_scope(ledger) as s:
        act(s, Action.EXPIRE, now=granted.valid_until - timedelta(microseconds=1))
    with db.session_scope(ledger) as s:
        change = act(s, Action.EXPIRE, now=granted.valid_until)
    assert change.occurred_at == granted.valid_until


def test_expire_cannot_be_judged_at_a_future_instant(ledger: Engine) -> None:
    """Expiring 'as of' next year would record, now, an expiry that has not happened: the
    consent is withdrawn early, systems are told to stop, and the event is recorded before it
    takes effect (recorded_at < occurred_at)."""
    with db.session_scope(ledger) as s:
        granted = lifecycle.grant(s, "alice", "news", Actor())
    assert granted.valid_until is not None
    before = counts(ledger)
    with pytest.raises(TransitionNotAllowed), db.session_scope(ledger) as s:
        lifecycle.expire(s, "alice", "news", as_of=granted.valid_until + DAY)
    assert counts(ledger) == before
    row = consent_row(ledger)
    assert row is not None and row.state == "given"


def test_expire_due_cannot_sweep_ahead_of_time(ledger: Engine) -> None:
    """The batch form has the same flaw: a sweep 'as of' a future instant expires consents that
    are still valid."""
    with db.session_scope(ledger) as s:
        granted = lifecycle.grant(s, "alice", "news", Actor())
    assert granted.valid_until is not None
    before = counts(ledger)
    with db.session_scope(ledger) as s:
        swept = lifecycle.expire_due(s, as_of=granted.valid_until + DAY)
    early = [(c.external_id, c.occurred_at.isoformat(), c.recorded_at.isoformat()) for c in swept]
    assert not early, f"expired before their validity ended (who, effective, recorded): {early}"
    assert counts(ledger) == before
    row = consent_row(ledger)
    assert row is not None and row.state == "given"


def test_invalidate_only_after_a_material_revision(ledger: Engine) -> None:
    add_subjects(ledger, "bob", "carol")
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "alice", "news", Actor())  # v1
    assert revise(ledger, material=False) == 2  # editorial: nothing to re-confirm
    with (
        pytest.raises(TransitionNotAllowed, match="no material") as exc,
        db.session_scope(ledger) as s,
    ):
        lifecycle.invalidate(s, "alice", "news", Actor())
    assert "'alice'" in str(exc.value) and "'news'" in str(exc.value)
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "bob", "news", Actor())  # v2
    assert revise(ledger, material=True) == 3
    assert revise(ledger, material=False) == 4
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "carol", "news", Actor())  # v4: newer than the material v3
    with db.session_scope(ledger) as s:
        a = lifecycle.invalidate(s, "alice", "news", Actor())
        b = lifecycle.invalidate(s, "bob", "news", Actor())
    assert (a.state, a.purpose_version, b.purpose_version) == ("invalidated", 1, 2)
    with pytest.raises(TransitionNotAllowed), db.session_scope(ledger) as s:
        lifecycle.invalidate(s, "carol", "news", Actor())
    row = consent_row(ledger)
    assert row is not None
    assert (row.state, row.given_at, row.valid_until) == ("invalidated", None, None)


def test_request_opens_a_request_and_answers_close_it(ledger: Engine) -> None:
    add_subjects(ledger, "bob")
    with db.session_scope(ledger) as s:
        asked = lifecycle.request(s, "alice", "news", Actor(ActorType.SYSTEM, Channel.SYSTEM))
        lifecycle.request(s, "bob", "news", Actor(ActorType.SYSTEM, Channel.SYSTEM))
    assert asked.state == "requested"
    with Session(ledger) as s:
        reqs = s.exec(select(ConsentRequest).order_by(col(ConsentRequest.id))).all()
    assert [(r.kind, r.status, r.purpose_version, r.closed_at) for r in reqs] == [
        ("collection", "open", 1, None),
        ("collection", "open", 1, None),
    ]
    with db.session_scope(ledger) as s:
        granted = lifecycle.grant(s, "alice", "news", Actor())
        lifecycle.refuse(s, "bob", "news", Actor())
    with Session(ledger) as s:
        reqs = s.exec(select(ConsentRequest).order_by(col(ConsentRequest.id))).all()
    assert [r.status for r in reqs] == ["answered", "answered"]
    assert reqs[0].closed_at == granted.recorded_at
    assert all(r.closed_at is not None for r in reqs)
    # Asking again after a refusal opens a new request; the answered ones stay answered.
    with db.session_scope(ledger) as s:
        lifecycle.request(s, "bob", "news", Actor())
    with Session(ledger) as s:
        statuses = s.exec(select(ConsentRequest.status).order_by(col(ConsentRequest.id))).all()
    assert statuses == ["answered", "answered", "open"]


def test_request_pins_the_notice_version_being_asked_about(ledger: Engine) -> None:
    """After a material revision the subject is asked about the new notice; the request (and a
    refusal of it) must record that version, not the version of the consent that lapsed."""
    with db.session_scope(ledger) as s:
        lifecycle.grant(s, "alice", "news", Actor())  # v1
    assert revise(ledger, material=True) == 2
    with db.session_scope(ledger) as s:
        lifecycle.invalidate(s, "alice", "news", lifecycle.system_actor())
    with db.session_scope(ledger) as s:
        asked = lifecycle.request(s, "alice", "news", Actor(ActorType.SYSTEM, Channel.SYSTEM))
    with Session(ledger) as s:
        req = s.exec(select(ConsentRequest)).one()
    assert (asked.purpose_version, req.purpose_version) == (2, 2)
    with db.session_scope(ledger) as s:
        refused = lifecycle.refuse(s, "alice", "news", Actor())
    assert refused.purpose_version == 2


def test_sequence_numbers_strictly_increase_per_subject(ledger: Engine) -> None:
    add_purpose(ledger, "offers", 365)
    add_subjects(ledger, "bob")
    with db.session_scope(ledger) as s:
        seqs = [
            lifecycle.grant(s, "alice", "news", Actor()).seq,
            lifecycle.grant(s, "alice", "offers", Actor()).seq,
            lifecycle.grant(s, "bob", "news", Actor()).seq,
        ]
    with db.session_scope(ledger) as s:
        seqs.append(lifecycle.revoke(s, "alice", "news", Actor()).seq)
        seqs.append(lifecycle.renew(s, "alice", "offers", Actor()).seq)
    with pytest.raises(TransitionNotAllowed), db.session_scope(ledger) as s:
        lifecycle.revoke(s, "alice", "news", Actor())
    with db.session_scope(ledger) as s:
        seqs.append(lifecycle.grant(s, "alice", "news", Actor()).seq)
    assert seqs == [1, 2, 1, 3, 4, 5]
    assert [e.seq for e in events(ledger, "alice")] == [1, 2, 3, 4, 5]
    assert [e.seq for e in events(ledger, "bob")] == [1]
    with Session(ledger) as s:
        last = dict(s.exec(select(Subject.external_id, Subject.last_seq)).all())
    assert last == {"alice": 5, "bob": 1}


# ------------------------------------------------------------------------ one transaction


class Boom(Exception):
    pass


@pytest.mark.parametrize("action", [Action.GRANT, Action.REQUEST, Action.REFUSE])
def test_failure_after_a_change_leaves_nothing(ledger: Engine, action: Action) -> None:
    with db.session_scope(ledger) as s:
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
    before = counts(ledger)
    with pytest.raises(Boom), db.session_scope(ledger) as s:
        apply(s, action)
        raise Boom
    assert counts(ledger) == before
    assert consent_row(ledger) is None
    with Session(ledger) as s:
        assert s.exec(select(Subject.last_seq)).one() == 0
    verify_ok(ledger)
    # and the ledger carries on from where it was
    with db.session_scope(ledger) as s:
        assert apply(s, action).seq == 1


def test_rolled_back_revocation_enqueues_nothing(ledger: Engine) -> None:
    with db.session_scope(ledger) as s:
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
        granted = lifecycle.grant(s, "alice", "news", Actor())
    before = counts(ledger)
    with pytest.raises(Boom), db.session_scope(ledger) as s:
        change = lifecycle.revoke(s, "alice", "news", Actor())
        assert change.deliveries == 1
        s.flush()
        raise Boom
    assert counts(ledger) == before
    assert deliveries(ledger) == []
    row = consent_row(ledger)
    assert row is not None and (row.state, row.last_event_id) == ("given", granted.event_id)
    verify_ok(ledger)


# ------------------------------------------------------------------------------- the outbox


@pytest.fixture
def subscribed(ledger: Engine) -> Engine:
    """news is processed by crm and mailer (webhooks) and warehouse (none); ads has offers."""
    add_purpose(ledger, "offers", 365)
    with db.session_scope(ledger) as s:
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
        systems.add(s, "mailer", ["news", "offers"], webhook_url="https://mail.example.com/h")
        systems.add(s, "warehouse", ["news"])
        systems.add(s, "ads", ["offers"], webhook_url="https://ads.example.com/hook")
    return ledger


def withdraw(engine: Engine, how: str) -> Change:
    # Only an expiry needs the validity to have ended; the others withdraw a consent in force.
    t0 = utcnow() - (40 if how == "expire" else 5) * DAY
    with db.session_scope(engine) as s:
        act(s, Action.GRANT, now=t0)
    if how == "invalidate":
        revise(engine, material=True)
    with db.session_scope(engine) as s:
        if how == "revoke":
            return lifecycle.revoke(s, "alice", "news", Actor())
        if how == "expire":
            return lifecycle.expire(s, "alice", "news")
        return lifecycle.invalidate(s, "alice", "news", lifecycle.system_actor())


@pytest.mark.parametrize("how", ["revoke", "expire", "invalidate"])
def test_withdrawing_change_enqueues_one_delivery_per_subscribed_webhook(
    subscribed: Engine, how: str
) -> None:
    # A paused system's deliveries are held, never skipped.
    with db.session_scope(subscribed) as s:
        s.execute(update(System).where(col(System.name) == "mailer").values(status="paused"))
    change = withdraw(subscribed, how)
    assert change.deliveries == 2
    rows = deliveries(subscribed)
    assert [n for n, _ in rows] == ["crm", "mailer"]
    state = change.state.value
    for _, d in rows:
        assert d.event_id == change.event_id
        assert (d.event_type, d.state, d.attempts) == (f"consent.{state}", "pending", 0)
        assert d.next_attempt_at == change.recorded_at
        body = json.loads(d.payload)
        assert body["type"] == f"consent.{state}"
        assert body["data"] == {
            "subject": "alice",
            "purpose": "news",
            "purpose_version": change.purpose_version,
            "state": state,
            "effective_at": change.occurred_at.isoformat().replace("+00:00", "Z"),
            "event_id": str(change.event_id),
            "sequence": change.seq,
        }
        assert "alice@example.com" not in d.payload
    assert len({d.webhook_id for _, d in rows}) == 2
    assert rows[0][1].payload == rows[1][1].payload
    assert audit_for_event(subscribed, change.event_id).detail["deliveries"] == 2


@pytest.mark.parametrize("action", [Action.GRANT, Action.REQUEST, Action.REFUSE])
def test_non_withdrawing_changes_enqueue_nothing(subscribed: Engine, action: Action) -> None:
    with db.session_scope(subscribed) as s:
        change = apply(s, action)
    assert change.deliveries == 0
    assert deliveries(subscribed) == []


def test_renew_enqueues_nothing(subscribed: Engine) -> None:
    with db.session_scope(subscribed) as s:
        lifecycle.grant(s, "alice", "news", Actor())
        change = lifecycle.renew(s, "alice", "news", Actor())
    assert change.deliveries == 0 and deliveries(subscribed) == []


def test_withdrawal_without_webhook_subscribers_enqueues_nothing(subscribed: Engine) -> None:
    add_purpose(subscribed, "research", 30)
    with db.session_scope(subscribed) as s:
        systems.add(s, "lab", ["research"])  # no webhook URL
        lifecycle.grant(s, "alice", "research", Actor())
    with db.session_scope(subscribed) as s:
        change = lifecycle.revoke(s, "alice", "research", Actor())
    assert change.deliveries == 0 and deliveries(subscribed) == []


# --------------------------------------------------------------------------------- batches

EVENT_FIELDS = (
    "action",
    "state",
    "previous_state",
    "purpose_version",
    "occurred_at",
    "valid_until",
    "actor_type",
    "actor",
    "channel",
    "reason",
    "evidence",
    "run_id",
    "seq",
)
AUDIT_FIELDS = ("action", "purpose_key", "actor_type", "actor", "channel", "run_id")


def snapshot(engine: Engine, external_id: str, change: Change) -> dict[str, Any]:
    """Everything one change wrote, minus ids, subject identity and recording times."""
    row = consent_row(engine, external_id)
    assert row is not None
    e = event(engine, change.event_id)
    a = audit_for_event(engine, change.event_id)
    # A change effective when recorded (invalidation) compares as "effective when recorded".
    now_texts = {e.recorded_at.isoformat(), e.recorded_at.isoformat().replace("+00:00", "Z")}

    def when(value: Any) -> Any:
        return "=recorded_at" if value == e.recorded_at or value in now_texts else value

    detail = {k: when(v) for k, v in a.detail.items() if k != "event_id"}
    outbox = []
    for name, d in deliveries(engine, change.event_id):
        body = json.loads(d.payload)
        assert body.pop("timestamp") == e.recorded_at.isoformat().replace("+00:00", "Z")
        body["data"].pop("event_id")
        body["data"]["effective_at"] = when(body["data"]["effective_at"])
        outbox.append((name, d.event_type, d.state, d.attempts, body))
    changed = {k: when(v) for k, v in ChangeOut.of(change).model_dump(mode="json").items()}
    for key in ("event_id", "recorded_at"):
        changed.pop(key)
    return {
        "consent": (
            row.state,
            row.purpose_version,
            row.given_at,
            row.valid_until,
            row.reminder_stage,
            row.last_event_id == e.id,
            row.updated_at == e.recorded_at,
        ),
        "event": {f: when(getattr(e, f)) for f in EVENT_FIELDS},
        "audit": ({f: getattr(a, f) for f in AUDIT_FIELDS}, detail, a.recorded_at == e.recorded_at),
        "deliveries": outbox,
        "change": changed,
    }


def test_expire_due_writes_what_single_expire_writes(subscribed: Engine) -> None:
    add_subjects(subscribed, "bob")
    t0 = utcnow() - 40 * DAY
    with db.session_scope(subscribed) as s:
        act(s, Action.GRANT, "alice", now=t0)
        act(s, Action.GRANT, "bob", now=t0)
    with db.session_scope(subscribed) as s:
        single = lifecycle.expire(s, "alice", "news")
    with db.session_scope(subscribed) as s:
        batch = lifecycle.expire_due(s)
    assert [c.external_id for c in batch] == ["bob"]
    one, other = snapshot(subscribed, "alice", single), snapshot(subscribed, "bob", batch[0])
    # the webhook body names its subject: alice for one, bob for the other
    for _, _, _, _, body in other["deliveries"]:
        assert body["data"]["subject"] == "bob"
        body["data"]["subject"] = "alice"
    other["change"]["subject"] = "alice"
    assert one == other
    assert len(one["deliveries"]) == 2
    verify_ok(subscribed)


def test_invalidate_stale_writes_what_single_invalidate_writes(subscribed: Engine) -> None:
    add_subjects(subscribed, "bob")
    t0 = utcnow() - 5 * DAY
    with db.session_scope(subscribed) as s:
        act(s, Action.GRANT, "alice", now=t0)
        act(s, Action.GRANT, "bob", now=t0)
    revise(subscribed, material=True)
    with db.session_scope(subscribed) as s:
        single = lifecycle.invalidate(s, "alice", "news", lifecycle.system_actor())
    with db.session_scope(subscribed) as s:
        batch = lifecycle.invalidate_stale(s, "news")
    assert [c.external_id for c in batch] == ["bob"]
    one, other = snapshot(subscribed, "alice", single), snapshot(subscribed, "bob", batch[0])
    for _, _, _, _, body in other["deliveries"]:
        body["data"]["subject"] = "alice"
    other["change"]["subject"] = "alice"
    assert one == other
    assert one["consent"][:4] == ("invalidated", 1, None, None)
    verify_ok(subscribed)


def due_setup(engine: Engine, n_news: int, n_offers: int) -> datetime:
    """``n_news`` + ``n_offers`` due consents (one subject each, earliest news first) and one
    consent per purpose that is not due. Returns the instant the last of them became due."""
    base = utcnow() - 100 * DAY
    with db.session_scope(engine) as s:
        purposes.add(s, "offers", title="Offers", validity_days=30)
        for i in range(n_news + n_offers + 2):
            subjects.add(s, f"s{i:03d}")
        for i in range(n_news):
            act(s, Action.GRANT, f"s{i:03d}", "news", now=base + i * HOUR)
        for j in range(n_offers):
            i = n_news + j
            act(s, Action.GRANT, f"s{i:03d}", "offers", now=base + DAY + j * HOUR)
        lifecycle.grant(s, f"s{n_news + n_offers:03d}", "news", Actor())
        lifecycle.grant(s, f"s{n_news + n_offers + 1:03d}", "offers", Actor())
    return base + DAY + n_offers * HOUR + 30 * DAY


def test_expire_due_respects_limit_order_and_purposes(engine: Engine) -> None:
    add_purpose(engine, "news", 30)
    due_setup(engine, 5, 3)
    with db.session_scope(engine) as s:
        first = lifecycle.expire_due(s, limit=2)
    assert [(c.external_id, c.purpose) for c in first] == [("s000", "news"), ("s001", "news")]
    with db.session_scope(engine) as s:
        offers = lifecycle.expire_due(s, purposes_=["offers"])
    assert sorted(c.external_id for c in offers) == ["s005", "s006", "s007"]
    assert {c.purpose for c in offers} == {"offers"}
    with pytest.raises(NotFound), db.session_scope(engine) as s:
        lifecycle.expire_due(s, purposes_=["nope"])
    drained: list[str] = []
    for _ in range(10):
        with db.session_scope(engine) as s:
            batch = lifecycle.expire_due(s, limit=2)
        if not batch:
            break
        drained += [c.external_id for c in batch]
    assert drained == ["s002", "s003", "s004"]
    with db.session_scope(engine) as s:
        assert lifecycle.expire_due(s) == []
    with Session(engine) as s:
        states = dict(
            s.exec(
                select(Subject.external_id, Consent.state).join(
                    Subject, col(Subject.id) == Consent.subject_id
                )
            ).all()
        )
    assert states == {f"s{i:03d}": "expired" for i in range(8)} | {
        "s008": "given",
        "s009": "given",
    }
    verify_ok(engine)


def test_expire_due_as_of_a_past_instant(engine: Engine) -> None:
    add_purpose(engine, "news", 30)
    due_setup(engine, 4, 0)
    base_due = utcnow() - 70 * DAY  # s000 due at base + 30d = now - 70d; one an hour after
    with db.session_scope(engine) as s:
        got = lifecycle.expire_due(s, as_of=base_due + timedelta(minutes=90))
    assert [c.external_id for c in got] == ["s000", "s001"]
    for c in got:
        assert c.occurred_at == c.valid_until and c.recorded_at > c.occurred_at


def test_batch_assigns_consecutive_seqs_to_one_subject(engine: Engine) -> None:
    t0 = utcnow() - 60 * DAY
    with db.session_scope(engine) as s:
        for key in ("a", "b", "c"):
            purposes.add(s, key, title=key, validity_days=30)
        subjects.add(s, "alice")
        for key in ("a", "b", "c"):
            act(s, Action.GRANT, key=key, now=t0)
    with db.session_scope(engine) as s:
        changes = lifecycle.expire_due(s)
    assert sorted(c.seq for c in changes) == [4, 5, 6]
    assert [e.seq for e in events(engine)] == [1, 2, 3, 4, 5, 6]
    with Session(engine) as s:
        assert s.exec(select(Subject.last_seq)).one() == 6
    with db.session_scope(engine) as s:
        assert lifecycle.grant(s, "alice", "a", Actor()).seq == 7


def test_invalidate_stale_respects_limit_and_subjects(engine: Engine) -> None:
    add_purpose(engine, "news", 365)
    names = [f"s{i}" for i in range(6)]
    add_subjects(engine, *names)
    with db.session_scope(engine) as s:
        for name in names[:5]:
            lifecycle.grant(s, name, "news", Actor())
    revise(engine, material=True)
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "s5", "news", Actor())  # on v2: not stale
    revise(engine, material=False)
    with Session(engine) as s:
        ids = dict(s.exec(select(Subject.external_id, Subject.id)).all())
    with db.session_scope(engine) as s:
        picked = lifecycle.invalidate_stale(s, "news", subject_ids=[ids["s3"], ids["s5"]])
    assert [c.external_id for c in picked] == ["s3"]
    with db.session_scope(engine) as s:
        limited = lifecycle.invalidate_stale(s, "news", limit=2)
    assert len(limited) == 2
    with db.session_scope(engine) as s:
        rest = lifecycle.invalidate_stale(s, "news")
    with db.session_scope(engine) as s:
        assert lifecycle.invalidate_stale(s, "news") == []
    done = {c.external_id for c in picked + limited + rest}
    assert done == {"s0", "s1", "s2", "s3", "s4"}
    row = consent_row(engine, "s5")
    assert row is not None and row.state == "given"
    verify_ok(engine)


def count_statements(engine: Engine, fn: Any) -> int:
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])

    sa_event.listen(engine, "before_cursor_execute", listener)
    try:
        fn()
    finally:
        sa_event.remove(engine, "before_cursor_execute", listener)
    return len(seen)


def test_expire_due_statement_count_does_not_grow_with_the_batch(engine: Engine) -> None:
    add_purpose(engine, "news", 30)
    with db.session_scope(engine) as s:
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
    due_setup(engine, 60, 0)

    def sweep(limit: int) -> None:
        with db.session_scope(engine) as s:
            assert len(lifecycle.expire_due(s, limit=limit)) == limit

    small = count_statements(engine, lambda: sweep(3))
    large = count_statements(engine, lambda: sweep(50))
    assert large == small
    assert small < 25
    assert len(deliveries(engine)) == 53


def test_import_consents_writes_the_rows_a_single_change_writes(subscribed: Engine) -> None:
    """An imported withdrawal (propagated) writes the same kinds of rows as a revocation: the
    consent, one event with the same fields, one audit entry with the same detail keys, and one
    delivery per subscribed webhook with the same body shape."""
    add_subjects(subscribed, "bob")
    with db.session_scope(subscribed) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with db.session_scope(subscribed) as s:
        revoked = lifecycle.revoke(s, "alice", "news", Actor())
    with Session(subscribed) as s:
        bob_id = lifecycle.subject_id(s, "bob")
    when = utcnow() - 3 * DAY
    actor = Actor(ActorType.IMPORT, Channel.IMPORT, name="import:test", run_id="run-1")
    with db.session_scope(subscribed) as s:
        (imported,) = lifecycle.import_consents(
            s,
            [lifecycle.ImportRow(bob_id, "news", State.WITHDRAWN, given_at=when)],
            actor,
            propagate=True,
        )
    single, batch = snapshot(subscribed, "alice", revoked), snapshot(subscribed, "bob", imported)
    assert batch["consent"] == ("withdrawn", 1, None, None, None, True, True)
    assert single["consent"] == batch["consent"]
    assert batch["event"] | {"occurred_at": None} == {
        "action": "import",
        "state": "withdrawn",
        "previous_state": None,
        "purpose_version": 1,
        "occurred_at": None,
        "valid_until": None,
        "actor_type": "import",
        "actor": "import:test",
        "channel": "import",
        "reason": None,
        "evidence": None,
        "run_id": "run-1",
        "seq": 1,
    }
    assert event(subscribed, imported.event_id).occurred_at == when
    assert set(batch["audit"][1]) == set(single["audit"][1])
    assert batch["audit"][0]["action"] == "consent.import" and batch["audit"][2]
    assert [(n, t) for n, t, *_ in batch["deliveries"]] == [
        (n, t) for n, t, *_ in single["deliveries"]
    ]
    for (*_, one), (*_, other) in zip(single["deliveries"], batch["deliveries"], strict=True):
        assert set(one) == set(other) and set(one["data"]) == set(other["data"])
    verify_ok(subscribed)


def test_as_of_between_events(ledger: Engine) -> None:
    t1 = utcnow() - 100 * DAY
    t2, t3 = t1 + 5 * DAY, t1 + 10 * DAY
    with db.session_scope(ledger) as s:
        g1 = act(s, Action.GRANT, now=t1)
        r = act(s, Action.REVOKE, now=t2)
        g2 = act(s, Action.GRANT, now=t3)  # valid until t3 + 30 days, never swept
    tick = timedelta(microseconds=1)

    def state_at(at: datetime) -> list[tuple[str, str, uuid.UUID]]:
        with Session(ledger) as s:
            return [(v.purpose, v.state.value, v.event_id) for v in lifecycle.as_of(s, "alice", at)]

    assert state_at(t1 - tick) == []
    assert state_at(t1) == [("news", "given", g1.event_id)]
    assert state_at(t2 - tick) == [("news", "given", g1.event_id)]
    assert state_at(t2 + DAY) == [("news", "withdrawn", r.event_id)]
    assert state_at(t3 + DAY) == [("news", "given", g2.event_id)]
    assert g2.valid_until == t3 + 30 * DAY
    assert state_at(g2.valid_until - tick)[0][1] == "given"
    assert state_at(g2.valid_until) == [("news", "expired", g2.event_id)]
    assert state_at(utcnow())[0][1] == "expired"
    with Session(ledger) as s:
        (view,) = lifecycle.as_of(s, "alice", t2 - tick)
    assert (view.given_at, view.valid_until, view.seq) == (t1, t1 + 30 * DAY, 1)
    # once the sweep records it, the expiry is dated at the validity end, not at the sweep
    with db.session_scope(ledger) as s:
        swept = lifecycle.expire(s, "alice", "news")
    assert state_at(g2.valid_until) == [("news", "expired", swept.event_id)]
    assert state_at(g2.valid_until - tick) == [("news", "given", g2.event_id)]
    with Session(ledger) as s:
        assert lifecycle.as_of(s, "alice", utcnow()) == lifecycle.current(s, "alice")


@pytest.mark.parametrize("action", [Action.RENEW, Action.REVOKE, Action.INVALIDATE], ids=str)
def test_an_ended_consent_cannot_be_renewed_or_withdrawn(ledger: Engine, action: Action) -> None:
    """Given, but its validity ended before any sweep recorded it: it is expired in fact."""
    reach(ledger, "given", ended=True)
    before = counts(ledger)
    with pytest.raises(TransitionNotAllowed) as exc, db.session_scope(ledger) as s:
        apply(s, action)
    assert "validity ended" in str(exc.value)
    assert counts(ledger) == before


@pytest.mark.parametrize(("action", "to"), [(Action.GRANT, "given"), (Action.REFUSE, "refused")])
def test_an_ended_consent_is_recorded_expired_before_it_changes(
    ledger: Engine, action: Action, to: str
) -> None:
    reach(ledger, "given", ended=True)
    valid_until = consent_row(ledger).valid_until
    with db.session_scope(ledger) as s:
        change = apply(s, action)
    assert change.previous_state is State.EXPIRED and change.state == to
    with db.session_scope(ledger) as s:
        events = [e for _, e in lifecycle.history(s, "alice")][-2:]
    assert [(e.action, e.state) for e in events] == [("expire", "expired"), (action.value, to)]
    assert events[0].occurred_at == valid_until  # effective at the validity end
    assert [e.seq for e in events] == [events[0].seq, events[0].seq + 1]
    assert consent_row(ledger).state == to

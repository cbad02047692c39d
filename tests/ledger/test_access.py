"""Access checks: every reason code, the system's authorisation, and what a decision carries."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from consentflow import access, db, lifecycle, purposes, subjects, systems
from consentflow.access import Reason
from consentflow.errors import NotFound
from consentflow.lifecycle import Actor, Change
from consentflow.models import Action, metadata, utcnow
from consentflow.timeutil import iso_z
from consentflow.views import DecisionOut

DAY = timedelta(days=1)


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {
            t.name: s.execute(sa_select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


@pytest.fixture
def ledger(engine: Engine) -> Engine:
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.add(s, "offers", title="Offers", validity_days=30)
        subjects.add(s, "alice")
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
        systems.add(s, "ads", ["offers"])
    return engine


def check(engine: Engine, *args: str | None, **kwargs: object) -> access.Decision:
    with Session(engine) as s:
        return access.check(s, *args, **kwargs)  # type: ignore[arg-type]


def change(engine: Engine, *actions: Action, back: timedelta = timedelta(0)) -> Change:
    """Apply ``actions`` to alice/news, the first ``back`` ago; returns the last change."""
    start = utcnow() - back
    last = None
    with db.session_scope(engine) as s:
        for i, action in enumerate(actions):
            actor = lifecycle.system_actor() if action is Action.EXPIRE else Actor()
            now = start + i * timedelta(seconds=1)
            if action is Action.EXPIRE:
                now = utcnow()
            last = lifecycle._single(s, action, "alice", "news", actor, now=now)
    assert last is not None
    return last


def assert_decision(
    d: access.Decision, reason: Reason, last: Change | None, *, state: str | None = None
) -> None:
    assert d.reason is reason
    assert d.allowed is (reason is Reason.GIVEN)
    assert (d.subject, d.purpose) == ("alice", "news")
    if last is None:
        assert (d.state, d.event_id, d.valid_until, d.purpose_version) == (None, None, None, None)
    else:
        assert d.event_id == last.event_id
        assert d.valid_until == last.valid_until
        assert d.purpose_version == last.purpose_version
        assert d.state == (state or last.state.value)
    json.dumps(DecisionOut.model_validate(d).model_dump(mode="json"))


@pytest.mark.parametrize("system", [None, "crm"])
def test_given(ledger: Engine, system: str | None) -> None:
    last = change(ledger, Action.GRANT)
    before = counts(ledger)
    d = check(ledger, "alice", "news", system)
    assert_decision(d, Reason.GIVEN, last)
    assert d.system == system
    assert last.valid_until is not None and d.valid_until == last.valid_until
    assert counts(ledger) == before
    data = DecisionOut.model_validate(d).model_dump(mode="json")
    assert data["allowed"] is True and data["reason"] == "given"
    assert data["event_id"] == str(last.event_id)
    assert data["valid_until"] == iso_z(last.valid_until)


@pytest.mark.parametrize(
    ("actions", "reason"),
    [
        ((Action.REQUEST,), Reason.REQUESTED),
        ((Action.REFUSE,), Reason.REFUSED),
        ((Action.REQUEST, Action.REFUSE), Reason.REFUSED),
        ((Action.GRANT, Action.REVOKE), Reason.WITHDRAWN),
        ((Action.GRANT, Action.REVOKE, Action.GRANT), Reason.GIVEN),
    ],
    ids=["requested", "refused", "request-refused", "withdrawn", "granted-again"],
)
def test_reason_follows_the_state(
    ledger: Engine, actions: tuple[Action, ...], reason: Reason
) -> None:
    last = change(ledger, *actions)
    assert_decision(check(ledger, "alice", "news", "crm"), reason, last)


def test_expired_after_the_sweep(ledger: Engine) -> None:
    last = change(ledger, Action.GRANT, Action.EXPIRE, back=40 * DAY)
    assert last.state == "expired"
    assert_decision(check(ledger, "alice", "news", "crm"), Reason.EXPIRED, last)


def test_expired_before_the_sweep(ledger: Engine) -> None:
    last = change(ledger, Action.GRANT, back=40 * DAY)
    d = check(ledger, "alice", "news", "crm")
    assert_decision(d, Reason.EXPIRED, last, state="given")
    assert d.valid_until is not None and d.valid_until < d.checked_at


def test_expiry_boundary_with_at(ledger: Engine) -> None:
    last = change(ledger, Action.GRANT)
    assert last.valid_until is not None
    tick = timedelta(microseconds=1)
    just_before = check(ledger, "alice", "news", "crm", at=last.valid_until - tick)
    assert just_before.allowed and just_before.checked_at == last.valid_until - tick
    at_end = check(ledger, "alice", "news", "crm", at=last.valid_until)
    assert_decision(at_end, Reason.EXPIRED, last, state="given")


def test_invalidated(ledger: Engine) -> None:
    change(ledger, Action.GRANT)
    with db.session_scope(ledger) as s:
        purposes.revise(s, "news", material=True, title="News, now with partners")
    last = change(ledger, Action.INVALIDATE)
    d = check(ledger, "alice", "news", "crm")
    assert_decision(d, Reason.INVALIDATED, last)
    assert d.purpose_version == 1


def test_no_consent(ledger: Engine) -> None:
    assert_decision(check(ledger, "alice", "news", "crm"), Reason.NO_CONSENT, None)
    change(ledger, Action.GRANT)
    with db.session_scope(ledger) as s:
        subjects.add(s, "bob")
    d = check(ledger, "bob", "news")
    assert d.reason is Reason.NO_CONSENT and not d.allowed


def test_system_not_authorised(ledger: Engine) -> None:
    change(ledger, Action.GRANT)
    assert_decision(check(ledger, "alice", "news", "ads"), Reason.SYSTEM_NOT_AUTHORISED, None)
    # authorisation is judged before identity: nothing about the subject leaks
    d = check(ledger, "nobody", "news", "ads")
    assert d.reason is Reason.SYSTEM_NOT_AUTHORISED and not d.allowed


def test_unknown_subject_and_purpose(ledger: Engine) -> None:
    d = check(ledger, "nobody", "news", "crm")
    assert (d.reason, d.allowed, d.subject, d.event_id) == (
        Reason.UNKNOWN_SUBJECT,
        False,
        "nobody",
        None,
    )
    d = check(ledger, "alice", "nothing", "crm")
    assert (d.reason, d.allowed, d.purpose) == (Reason.UNKNOWN_PURPOSE, False, "nothing")
    d = check(ledger, "alice", "nothing")
    assert d.reason is Reason.UNKNOWN_PURPOSE


def test_unknown_system_is_an_error(ledger: Engine) -> None:
    change(ledger, Action.GRANT)
    with pytest.raises(NotFound, match="unknown system 'nosuch'"):
        check(ledger, "alice", "news", "nosuch")


def test_every_reason_code_is_reachable() -> None:
    """The reason codes the README documents, exactly."""
    documented = {
        "given",
        "no_consent",
        "requested",
        "refused",
        "withdrawn",
        "expired",
        "invalidated",
        "system_not_authorised",
        "unknown_subject",
        "unknown_purpose",
    }
    assert {r.value for r in Reason} == documented

"""Property-based tests: random sequences of consent changes never break the ledger's invariants.

Each example uses a fresh subject in the test's database (SQLite and PostgreSQL) and a virtual
clock that starts in 2001 and moves forward by random steps, so that validity periods end and
sweeps become due without waiting. Changes are applied through the ledger's single write path
(``lifecycle._single``, whose ``now`` parameter is that clock) or, for imports, through
``lifecycle.import_consents``. A small model written from the README's rule table predicts which
changes are allowed and what they lead to.

Invariants checked after every example:

* the subject's sequence numbers are 1..N without gaps, N the number of accepted changes;
* the ``consent`` table equals ``lifecycle.replay`` of the history (state, version, given_at,
  valid_until, last event);
* every event starts from the state the previous event of that purpose left;
* the audit chain verifies;
* a refused change writes nothing at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, lifecycle, purposes, subjects
from consentflow.errors import TransitionNotAllowed
from consentflow.lifecycle import Actor
from consentflow.models import (
    Action,
    ActorType,
    AuditHead,
    Channel,
    Consent,
    Purpose,
    State,
    Subject,
    metadata,
)

DAY = timedelta(days=1)
BASE = datetime(2001, 1, 1, tzinfo=UTC)
KEYS = ("p30", "p365")
STEPS = (timedelta(0), timedelta(hours=1), 10 * DAY, 40 * DAY, 400 * DAY)
CHANGES = ("request", "grant", "refuse", "revoke", "renew", "expire", "invalidate")
OPS = (*CHANGES, "import", "revise_material", "revise_editorial")
ENDED = {None, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.INVALIDATED}
ALLOWED: dict[str, set[State | None]] = {
    "request": ENDED,
    "grant": ENDED | {State.REQUESTED},
    "refuse": (ENDED - {State.REFUSED}) | {State.REQUESTED},
    "revoke": {State.GIVEN},
    "renew": {State.GIVEN},
    "expire": {State.GIVEN},
    "invalidate": {State.GIVEN},
    "import": {None},
}
IMPORTABLE = (State.GIVEN, State.REFUSED, State.WITHDRAWN, State.EXPIRED, State.REQUESTED)


@dataclass(frozen=True)
class Model:
    """What the README's rules say the consent should be (version None: not predicted)."""

    state: State | None = None
    version: int | None = None
    given_at: datetime | None = None
    valid_until: datetime | None = None


# Weighted pools: mostly one purpose and mostly consent changes, so that a few ops reach deep
# states (given, due, then revised) often enough within a modest number of examples.
op_strategy = st.tuples(
    st.sampled_from((*CHANGES, *CHANGES, "import", "revise_material", "revise_editorial")),
    st.sampled_from(("p30", "p30", "p30", "p365")),
    st.sampled_from((*STEPS, 40 * DAY)),
    st.sampled_from(IMPORTABLE),
)


def ensure_purposes(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        if s.exec(select(Purpose.id)).first() is None:
            purposes.add(s, "p30", title="Thirty", validity_days=30)
            purposes.add(s, "p365", title="Year", validity_days=365)


def fingerprint(engine: Engine) -> tuple[object, ...]:
    """Row counts of every table, every consent row and the audit head."""
    with Session(engine) as s:
        counts = tuple(  # one query for every table's count
            s.execute(
                sa_select(
                    *(
                        sa_select(func.count()).select_from(t).scalar_subquery()
                        for t in metadata.sorted_tables
                    )
                )
            ).one()
        )
        consents = tuple(
            (c.id, c.state, c.purpose_version, c.given_at, c.valid_until, c.last_event_id)
            for c in s.exec(select(Consent).order_by(col(Consent.id)))
        )
        seqs = tuple(s.exec(select(Subject.last_seq).order_by(col(Subject.id))).all())
        head = s.exec(select(AuditHead.seq, AuditHead.hash)).one()
    return counts, consents, seqs, tuple(head)


def expected(op: str, cur: Model, info: purposes.PurposeInfo, now: datetime) -> Model | None:
    """The model's prediction: the new consent, or None if the rules refuse the change."""
    if cur.state not in ALLOWED[op]:
        return None
    validity = timedelta(days=info.validity_days)
    if op == "grant":
        return Model(State.GIVEN, info.current_version, now, now + validity)
    if op == "renew":
        return Model(State.GIVEN, info.current_version, cur.given_at, now + validity)
    if op == "expire":
        if cur.valid_until is None or cur.valid_until > now:
            return None
        return Model(State.EXPIRED, cur.version, cur.given_at, cur.valid_until)
    if op == "invalidate":
        if cur.version is None or cur.version >= info.material_version:
            return None
        return Model(State.INVALIDATED, cur.version, None, None)
    if op == "revoke":
        return Model(State.WITHDRAWN, cur.version, None, None)
    to = {"request": State.REQUESTED, "refuse": State.REFUSED}[op]
    return Model(to, None, None, None)


def run_change(
    engine: Engine, op: str, external_id: str, key: str, now: datetime, imported: State
) -> bool:
    """Apply one change; True if the ledger accepted it."""
    try:
        with db.session_scope(engine) as s:
            if op == "import":
                sid = lifecycle.subject_id(s, external_id)
                row = lifecycle.ImportRow(sid, key, imported, given_at=now)
                actor = Actor(ActorType.IMPORT, Channel.IMPORT, name="import:props")
                return bool(lifecycle.import_consents(s, [row], actor))
            action = Action(op)
            system = action in (Action.EXPIRE, Action.INVALIDATE)
            actor = lifecycle.system_actor() if system else Actor()
            lifecycle._single(s, action, external_id, key, actor, now=now, as_of=now)
            return True
    except TransitionNotAllowed:
        return False


def check_invariants(engine: Engine, external_id: str, accepted: int) -> None:
    with Session(engine) as s:
        history = lifecycle.history(s, external_id)
        current = {v.purpose: v for v in lifecycle.current(s, external_id)}
        last_seq = s.exec(select(Subject.last_seq).where(Subject.external_id == external_id)).one()
        verification = audit.verify(s)
    assert [e.seq for _, e in history] == list(range(1, accepted + 1))
    assert last_seq == accepted
    assert current == lifecycle.replay(history)
    previous: dict[str, str | None] = {}
    for key, e in history:
        assert e.previous_state == previous.get(key), (key, e.seq)
        previous[key] = e.state
        if e.action == Action.EXPIRE:
            assert e.occurred_at == e.valid_until and e.occurred_at <= e.recorded_at
    assert verification.ok, verification


def _run_example(engine: Engine, ops: list[tuple[str, str, timedelta, State]]) -> None:
    ensure_purposes(engine)
    external_id = f"p-{uuid.uuid4().hex[:12]}"
    with db.session_scope(engine) as s:
        subjects.add(s, external_id)
    model: dict[str, Model] = {k: Model() for k in KEYS}
    now, accepted = BASE, 0
    for op, key, step, imported in ops:
        now += step
        if op.startswith("revise_"):
            with db.session_scope(engine) as s:
                extra = {} if op == "revise_material" else {"validity_days": 30 + accepted}
                purposes.revise(
                    s, key, material=op == "revise_material", title=uuid.uuid4().hex, **extra
                )
            continue
        with Session(engine) as s:
            info = purposes.get(s, key)
        if op == "import":
            validity = timedelta(days=info.validity_days)
            keeps = imported in (State.GIVEN, State.EXPIRED)
            want: Model | None = (
                Model(
                    imported,
                    info.current_version,
                    now if keeps else None,
                    now + validity if keeps else None,
                )
                if model[key].state is None
                else None
            )
            ended_first = False
        else:
            cur = model[key]
            # A given consent whose validity has ended is expired in fact: any other change
            # first records that expiry (one more event), then is judged from expired.
            ended_first = (
                op != "expire"
                and cur.state is State.GIVEN
                and cur.valid_until is not None
                and cur.valid_until <= now
            )
            if ended_first:
                cur = Model(State.EXPIRED, cur.version, cur.given_at, cur.valid_until)
            want = expected(op, cur, info, now)
        # A change the model refuses must change nothing (one the model accepts and the ledger
        # refuses fails the next assertion already, so only a predicted refusal needs this).
        before = fingerprint(engine) if want is None else None
        ok = run_change(engine, op, external_id, key, now, imported)
        assert ok == (want is not None), (op, key, model[key])
        if not ok:
            assert fingerprint(engine) == before, f"refused {op} changed something"
            continue
        accepted += 2 if ended_first else 1
        assert want is not None
        with Session(engine) as s:
            views = {v.purpose: v for v in lifecycle.current(s, external_id)}
        got = views[key]
        if want.version is None:
            want = replace(want, version=got.purpose_version)
        assert (got.state, got.purpose_version, got.given_at, got.valid_until) == (
            want.state,
            want.version,
            want.given_at,
            want.valid_until,
        ), op
        model[key] = want
    check_invariants(engine, external_id, accepted)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op_strategy, min_size=1, max_size=20))
def test_random_changes_keep_the_ledger_consistent(
    engine: Engine, ops: list[tuple[str, str, timedelta, State]]
) -> None:
    _run_example(engine, ops)


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.sampled_from(STEPS[1:]), min_size=2, max_size=8),
    probe=st.floats(min_value=0, max_value=1),
)
def test_as_of_returns_the_state_in_effect_at_any_instant(
    engine: Engine, steps: list[timedelta], probe: float
) -> None:
    """Time travel: as_of at any instant equals the current state as it was right after the last
    change effective by then, with a given consent past its validity end shown as expired."""
    ensure_purposes(engine)
    external_id = f"t-{uuid.uuid4().hex[:12]}"
    with db.session_scope(engine) as s:
        subjects.add(s, external_id)
    now = BASE
    cycle = ["grant", "revoke", "grant", "renew", "expire", "request", "refuse", "grant"]
    timeline: list[tuple[datetime, lifecycle.ConsentView]] = []
    for i, step in enumerate(steps):
        now += step
        if run_change(engine, cycle[i % len(cycle)], external_id, "p30", now, State.GIVEN):
            with Session(engine) as s:
                (view,) = lifecycle.current(s, external_id)
                events = [e for _, e in lifecycle.history(s, external_id)]
            lapse = events[-2] if len(events) > 1 else None
            if lapse and lapse.action == "expire" and lapse.recorded_at == events[-1].recorded_at:
                # The change first recorded the expiry of a consent that had ended.
                _, given = timeline[-1]
                expired = replace(given, state=State.EXPIRED, event_id=lapse.id, seq=lapse.seq)
                timeline.append((lapse.occurred_at, expired))
            effective = view.valid_until if view.state == State.EXPIRED else now
            assert effective is not None
            timeline.append((effective, view))
    at = BASE + (now + 60 * DAY - BASE) * probe
    with Session(engine) as s:
        views = lifecycle.as_of(s, external_id, at)
    in_effect = [v for when, v in timeline if when <= at]
    if not in_effect:
        assert views == []
        return
    want = in_effect[-1]
    if want.state == State.GIVEN and want.valid_until and want.valid_until <= at:
        want = replace(want, state=State.EXPIRED)
    assert views == [want]

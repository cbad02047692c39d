"""Concurrency on PostgreSQL: separate processes changing the same consents at the same time.

Processes are started with the 'spawn' context (a fresh interpreter each, as separate workers
would be) and kept in step with a ``multiprocessing.Barrier``; no test here sleeps.
"""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from consentflow import audit, db, importer, lifecycle, purposes, subjects, systems
from consentflow.lifecycle import Actor
from consentflow.models import Consent, ConsentEvent, Delivery, State, Subject, utcnow

ROUNDS = 100
TIMEOUT = 120


def _flip_worker(url: str, barrier: Any, offset: int, rounds: int, out: Any) -> None:
    """Alternate revoke and grant on alice/news; report (accepted, refused)."""
    from consentflow.errors import TransitionNotAllowed

    engine = db.make_engine(url)
    accepted = refused = 0
    try:
        barrier.wait(TIMEOUT)
        for i in range(rounds):
            if i % 10 == 0:
                barrier.wait(TIMEOUT)  # re-align often so that the two really interleave
            change = lifecycle.revoke if (i + offset) % 2 == 0 else lifecycle.grant
            try:
                with db.session_scope(engine) as s:
                    change(s, "alice", "news", Actor(name=f"worker-{offset}"))
                accepted += 1
            except TransitionNotAllowed:
                refused += 1
        out.put((offset, accepted, refused, None))
    except BaseException as exc:  # report instead of hanging the parent
        barrier.abort()
        out.put((offset, accepted, refused, repr(exc)))
    finally:
        engine.dispose()


def _sweep_worker(url: str, barrier: Any, limit: int, out: Any) -> None:
    """Run expire_due batch after batch until no due consent is left; report what it expired."""
    engine = db.make_engine(url)
    expired: list[tuple[str, str]] = []
    try:
        barrier.wait(TIMEOUT)
        while True:
            with db.session_scope(engine) as s:
                changes = lifecycle.expire_due(s, limit=limit)
            expired += [(c.external_id, c.purpose) for c in changes]
            if changes:
                continue
            # An empty batch can mean the other worker holds the rows: stop only when none is due.
            with Session(engine) as s:
                left = s.exec(
                    select(func.count())
                    .select_from(Consent)
                    .where(Consent.state == State.GIVEN.value, col(Consent.valid_until) <= utcnow())
                ).one()
            if left == 0:
                break
        out.put((expired, None))
    except BaseException as exc:
        barrier.abort()
        out.put((expired, repr(exc)))
    finally:
        engine.dispose()


def _run(target: Any, argsets: list[tuple[Any, ...]]) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(argsets))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args[:1], barrier, *args[1:], out)) for args in argsets
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=TIMEOUT) for _ in procs]
    finally:
        for p in procs:
            p.join(TIMEOUT)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return results


def test_two_processes_revoking_and_granting_one_consent(pg_engine: Engine) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    with db.session_scope(pg_engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        subjects.add(s, "alice")
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hook")
        lifecycle.grant(s, "alice", "news", Actor())
    results = _run(_flip_worker, [(url, 0, ROUNDS), (url, 1, ROUNDS)])
    assert [r[3] for r in results] == [None, None], results
    accepted = sum(r[1] for r in results)
    assert all(r[1] + r[2] == ROUNDS for r in results)
    assert accepted > 0
    n = 1 + accepted  # the initial grant

    with Session(pg_engine) as s:
        history = lifecycle.history(s, "alice")
        current = {v.purpose: v for v in lifecycle.current(s, "alice")}
        last_seq = s.exec(select(Subject.last_seq)).one()
        withdrawals = s.exec(select(func.count()).select_from(Delivery)).one()
        verification = audit.verify(s)
        consent_entries = [e for e in audit.iter_entries(s) if e.action.startswith("consent.")]
    events = [e for _, e in history]
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert last_seq == n
    assert current == lifecycle.replay(history)
    previous = None
    for e in events:
        assert e.previous_state == previous, f"event {e.seq} did not start where {e.seq - 1} ended"
        assert not (e.action == "grant" and e.previous_state == "given")
        assert not (e.action == "revoke" and e.previous_state != "given")
        previous = e.state
    assert withdrawals == sum(1 for e in events if e.action == "revoke")
    assert verification.ok, verification
    assert [e.detail["seq"] for e in consent_entries] == list(range(1, n + 1))
    assert {e.actor for e in events[1:]} <= {"worker-0", "worker-1"}


def test_two_processes_sweeping_expire_each_consent_once(pg_engine: Engine, tmp_path: Path) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    due, fresh = 2000, 50
    with db.session_scope(pg_engine) as s:
        purposes.add(s, "news", title="News", validity_days=30)
        purposes.add(s, "offers", title="Offers", validity_days=30)
        systems.add(s, "crm", ["news", "offers"], webhook_url="https://crm.example.com/hook")
    given = (utcnow() - timedelta(days=60)).date().isoformat()
    path = tmp_path / "due.csv"
    with path.open("w") as fh:
        fh.write("external_id,email,locale,purpose,state,given_at,valid_until\n")
        for i in range(due // 2):  # two due consents per subject, so batches share subjects
            fh.write(f"s{i:05d},,,news,given,{given},\n")
            fh.write(f"s{i:05d},,,offers,given,{given},\n")
        for i in range(fresh):
            fh.write(f"f{i:05d},,,news,given,,\n")
    report = importer.import_file(pg_engine, path)
    assert report.consents_created == due + fresh

    results = _run(_sweep_worker, [(url, 150), (url, 150)])
    assert [r[1] for r in results] == [None, None], results
    expired = [pair for r in results for pair in r[0]]
    assert len(expired) == due
    assert len(set(expired)) == due  # nobody expired twice

    with Session(pg_engine) as s:
        expire_events = s.exec(
            select(ConsentEvent.subject_id, ConsentEvent.purpose_id, func.count())
            .where(ConsentEvent.action == "expire")
            .group_by(col(ConsentEvent.subject_id), col(ConsentEvent.purpose_id))
        ).all()
        states = dict(
            s.exec(select(Consent.state, func.count()).group_by(col(Consent.state))).all()
        )
        deliveries = s.exec(select(func.count()).select_from(Delivery)).one()
        seqs = dict(
            s.exec(select(Subject.last_seq, func.count()).group_by(col(Subject.last_seq))).all()
        )
        verification = audit.verify(s)
    assert len(expire_events) == due and {c for _, _, c in expire_events} == {1}
    assert states == {"expired": due, "given": fresh}
    assert deliveries == due
    assert seqs == {4: due // 2, 1: fresh}  # two imports and two expiries per due subject
    assert verification.ok, verification

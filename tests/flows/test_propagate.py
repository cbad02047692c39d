"""The propagate loop: directly (``run_loop``) and as a Prefect flow under the test harness.

Real receivers on loopback, real databases, a real Prefect test server. Synchronisation is on
events: a pass's ``on_pass`` callback, the receiver's request hook, the listener's backend in
``pg_stat_activity``, a marker event at the end of Prefect's event stream. The only clock in
these tests is each run's own ``run_seconds`` (a few seconds): the loop ending by itself is
what is under test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db
from consentflow.delivery import engine as eng
from consentflow.delivery import events, schedule, wakeup
from consentflow.errors import InvalidInput
from consentflow.models import AuditEntry, Delivery, utcnow
from tests.support.webhooks import Captured, ledger, revoke, verify

pytestmark = pytest.mark.usefixtures("allow_loopback")

LONG = 30.0  # bounds a failing test only


def run_logs(run_id: str) -> list[tuple[int, str]]:
    """(level, message) of a flow run's logs, as the Prefect server holds them (the UI's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in the background: send what is queued
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return [(log.level, log.message) for log in logs]


def run_entry(engine: Any, run_id: str) -> AuditEntry:
    with db.session_scope(engine) as s:
        [entry] = s.exec(
            select(AuditEntry)
            .where(AuditEntry.action == "flow.run", AuditEntry.run_id == run_id)
            .order_by(col(AuditEntry.seq))
        ).all()
        return entry


def seen_events(action: Callable[[], Any]) -> tuple[Any, list[Any]]:
    """``action()``'s result and the consentflow events it emitted, in order. A subscriber to
    the test server's event stream is open while ``action`` runs; then a marker event is
    emitted through the same queue; events arrive in order, so all of ``action``'s are in when
    the marker is (no clock)."""
    from prefect.events import emit_event
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    marker = f"consentflow.test.marker-{uuid.uuid4().hex}"
    names = [events.DEAD_LETTERED, events.ENDPOINT_FAILING, events.LOOP_ENDED, marker]
    since = utcnow()

    async def watch() -> tuple[Any, list[Any]]:
        seen = []
        only = EventFilter(event=EventNameFilter(name=names))
        async with get_events_subscriber(filter=only) as subscriber:
            result = await asyncio.to_thread(action)
            emit_event(event=marker, resource={"prefect.resource.id": "consentflow.test"})
            await asyncio.to_thread(EventsWorker.drain_all, timeout=30)
            while True:
                event = await asyncio.wait_for(anext(subscriber), timeout=60)
                if event.event == marker:
                    return result, seen
                if event.occurred >= since:  # the stream replays the last minute
                    seen.append(event)

    return asyncio.run(watch())


def of_run(seen: list[Any], run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, resource id, payload) of the events that the flow run ``run_id`` emitted."""
    return [
        (e.event, e.resource.id, dict(e.payload))
        for e in seen
        if any(r.id == f"prefect.flow-run.{run_id}" for r in e.related)
    ]


# ------------------------------------------------------------------------------ the loop


def test_a_commit_wakes_the_waiting_loop_which_delivers_it(engine, receiver):
    """After its first pass the loop waits; a withdrawal committed then is delivered by a
    wake-up (a NOTIFY on PostgreSQL, the poll on SQLite), long before the run's end."""
    from flows.propagate import LoopStats, run_loop

    secrets = ledger(engine, receiver, {"crm": "/crm"})
    arrived = threading.Event()
    receiver.set("/crm", hook=lambda _: arrived.set())
    first_pass = threading.Event()
    stats = LoopStats(slot=0)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            run_loop,
            engine,
            eng.Options(timeout=5),
            run_id=None,
            run_seconds=4,
            stats=stats,
            on_pass=lambda _: first_pass.set(),
        )
        assert first_pass.wait(LONG)
        revoke(engine)
        assert arrived.wait(LONG)
        assert not running.done()  # delivered while the loop still runs
        report = running.result(timeout=LONG)
    assert stats.wakeups >= 1 and stats.passes >= 2
    assert report.counts == {("crm", "delivered"): 1}
    verify(receiver.at("/crm")[0], secrets["crm"])


def test_a_retry_is_sent_when_due_without_a_new_commit(engine, receiver):
    """The wait ends when the next scheduled attempt is due (5 s +/- 20 % after a failure)."""
    from flows.propagate import LoopStats, run_loop

    ledger(engine, receiver, {"crm": "/crm"})
    second = threading.Event()
    receiver.set("/crm", status=500, hook=lambda _: len(receiver.at("/crm")) >= 2 and second.set())
    revoke(engine)
    stats = LoopStats(slot=0)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            run_loop, engine, eng.Options(timeout=5), run_id=None, run_seconds=8, stats=stats
        )
        assert second.wait(LONG)
        receiver.set("/crm", status=200)
        report = running.result(timeout=LONG)
    assert report.counts[("crm", "retried")] >= 2
    if engine.dialect.name == "postgresql":
        assert stats.wakeups == 0  # no commit, no notification: the timeout ended the wait


# ------------------------------------------------------------------------------ the flow


def test_a_run_delivers_ends_after_run_seconds_and_records_itself(
    prefect_harness, engine, receiver
):
    from flows.propagate import propagate

    secrets = ledger(engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=2)
    receiver.set("/ads", status=503)
    revoke(engine, 2)
    began = time.monotonic()
    summary, seen = seen_events(lambda: propagate(run_seconds=1.5))
    assert time.monotonic() - began >= 1.5  # the loop ran its time, then ended itself
    assert summary.outcome == "completed" and summary.run_id
    # the counts are not per purpose: "-"; the endpoints are in their own rows
    assert dict(summary.counts) == {("-", "delivered"): 2, ("-", "retried"): 2}
    zero = {"dead_lettered": 0, "disabled_410": 0, "held": 0, "lease_lost": 0, "due": 0}
    assert summary.endpoints == [
        {"endpoint": "ads", "delivered": 0, "retried": 2, **zero},
        {"endpoint": "crm", "delivered": 2, "retried": 0, **zero},
    ]
    assert summary.loop.slot == 0 and summary.loop.passes >= 1
    for req in receiver.at("/crm"):
        verify(req, secrets["crm"])
    entry = run_entry(engine, summary.run_id)
    assert entry.detail["outcome"] == "completed"
    assert entry.detail["totals"] == {"delivered": 2, "retried": 2}
    assert {r["purpose"] for r in entry.detail["counts"]} == {"-"}
    assert [e["endpoint"] for e in entry.detail["endpoints"]] == ["ads", "crm"]
    assert entry.detail["parameters"]["run_seconds"] == 1.5
    assert entry.detail["loop"]["slot"] == 0
    # every attempt to ads failed in this run: failing (an event), though the run delivered;
    # the loop's end is what the deployment's trigger starts the next loop on
    assert of_run(seen, summary.run_id) == [
        (events.ENDPOINT_FAILING, "consentflow.endpoint.ads", {"retried": 2}),
        (
            events.LOOP_ENDED,
            events.LOOP_RESOURCE,
            summary.loop.as_dict() | {"outcome": "completed"},
        ),
    ]

    # every attempt is in the run's own logs (failures as warnings); no secret, no person
    logs = [m for _, m in run_logs(summary.run_id)]
    failed = [m for m in logs if m.startswith("webhook msg_") and " to ads, " in m]
    assert len(failed) == 2 and all("attempt 1: HTTP 503" in m for m in failed)
    text = "\n".join(logs)
    for secret in secrets.values():
        assert secret.removeprefix("whsec_") not in text
    assert "subject-" not in text


def test_a_run_whose_attempts_all_fail_ends_failed_with_an_error_and_events(
    prefect_harness, engine, receiver
):
    from flows.propagate import PropagateFailed, propagate

    ledger(engine, receiver, {"crm": "/crm"}, subjects_n=2)
    receiver.set("/crm", status=500)
    revoke(engine, 2)
    state, seen = seen_events(lambda: propagate(run_seconds=0.5, return_state=True))
    assert state.is_failed()
    assert state.message == "propagate: all 2 delivery attempts failed (endpoints: crm)"
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, PropagateFailed) and failed.summary.outcome == "failed"
    run_id = failed.summary.run_id
    entry = run_entry(engine, run_id)
    assert entry.detail["outcome"] == "failed" and entry.detail["totals"] == {"retried": 2}
    assert entry.detail["reason"] == "all 2 delivery attempts failed (endpoints: crm)"
    assert of_run(seen, run_id) == [
        (events.ENDPOINT_FAILING, "consentflow.endpoint.crm", {"retried": 2}),
        (
            events.LOOP_ENDED,
            events.LOOP_RESOURCE,
            failed.summary.loop.as_dict() | {"outcome": "failed"},
        ),
    ]
    errors = [m for level, m in run_logs(run_id) if level >= 40]
    assert "propagate failed: all 2 delivery attempts failed (endpoints: crm)" in errors


def test_dead_letters_fail_the_run_and_emit_their_event(prefect_harness, engine, receiver):
    from flows.propagate import PropagateFailed, propagate

    ledger(engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=1)
    receiver.set("/ads", status=500)
    revoke(engine)
    with db.session_scope(engine) as s:  # an outage that already used the whole schedule
        s.execute(update(Delivery).values(attempts=schedule.MAX_ATTEMPTS - 1))

    def call() -> PropagateFailed:
        with pytest.raises(PropagateFailed) as raised:  # a direct call raises it
            propagate(run_seconds=0.5)
        return raised.value

    failed, seen = seen_events(call)
    summary = failed.summary
    assert str(failed) == "1 deliveries dead-lettered (endpoints: ads)"
    assert dict(summary.counts) == {("-", "delivered"): 1, ("-", "dead_lettered"): 1}
    assert run_entry(engine, summary.run_id).detail["outcome"] == "failed"
    assert of_run(seen, summary.run_id)[:2] == [
        (events.DEAD_LETTERED, "consentflow.endpoint.ads", {"dead_lettered": 1}),
        (events.ENDPOINT_FAILING, "consentflow.endpoint.ads", {"dead_lettered": 1}),
    ]
    text = json.dumps([e.payload for e in seen])
    assert "subject-" not in text and "127.0.0.1" not in text and "whsec_" not in text


def test_two_loops_share_the_queue_and_a_third_run_does_one_pass(
    prefect_harness, pg_engine, receiver
):
    """Two runs hold the two slots and wait on LISTEN; 40 withdrawals committed one by one are
    each delivered exactly once; a third run finds no slot, drains once and completes."""
    from flows.propagate import propagate

    ledger(pg_engine, receiver, {"crm": "/crm", "ads": "/ads"}, subjects_n=20)
    done = threading.Event()

    def count(_: Captured) -> None:
        if len(receiver.requests) >= 40:
            done.set()

    receiver.set("/crm", hook=count)
    receiver.set("/ads", hook=count)
    with ThreadPoolExecutor(2) as pool:
        loops = [pool.submit(propagate, run_seconds=15, loops=2, batch_size=5) for _ in range(2)]
        listening = 0
        deadline = time.monotonic() + LONG
        while listening < 2 and time.monotonic() < deadline:  # both loops are waiting
            with pg_engine.connect() as conn:
                listening = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    f"AND query = 'LISTEN {wakeup.CHANNEL}'"
                ).scalar_one()
            time.sleep(0.05)  # the poll interval of this condition, not a synchronisation
        assert listening == 2
        third = propagate(run_seconds=15, loops=2)
        assert third.loop.slot is None and third.loop.passes == 1 and third.outcome == "completed"
        for i in range(20):
            revoke(pg_engine, 1, start=i)
        assert done.wait(LONG)
        summaries = [f.result(timeout=LONG) for f in loops]
    assert sorted(s.loop.slot for s in summaries) == [0, 1]
    assert sum(s.total("delivered") for s in summaries) == 40
    assert set(receiver.ids().values()) == {1}  # nobody got anything twice
    with db.session_scope(pg_engine) as s:
        assert {d.state for d in s.exec(select(Delivery)).all()} == {"delivered"}


def test_as_of_is_for_dry_runs_only(prefect_harness, engine, receiver):
    from consentflow import runs
    from flows.propagate import propagate

    later, earlier = utcnow() + timedelta(hours=6), utcnow() - timedelta(hours=6)
    with pytest.raises(InvalidInput, match="as_of: allowed only with dry_run"):
        runs.prepare_flow("propagate", {"as_of": earlier.isoformat()})
    with pytest.raises(InvalidInput, match="as_of: as_of is in the future"):
        runs.prepare_flow("propagate", {"as_of": later.isoformat()})
    with pytest.raises(InvalidInput, match="systems"):
        runs.prepare_flow("propagate", {"systems": ["nope"]})
    ledger(engine, receiver, {"crm": "/crm"})
    revoke(engine)
    summary = propagate(dry_run=True, as_of=later.replace(tzinfo=None))
    assert dict(summary.counts) == {("-", "due"): 1} and receiver.requests == []
    assert summary.parameters["as_of"].startswith(later.isoformat()[:19])


def test_consentflow_run_propagate(prefect_harness, cli, receiver):
    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    r = cli("system", "add", "crm", "--purposes", "news", "--webhook-url", receiver.url("/h"))
    assert r.code == 0, r.err
    for cmd in (("subject", "add", "alice"), ("consent", "grant", "alice", "news")):
        assert cli(*cmd).code == 0
    assert cli("consent", "revoke", "alice", "news").code == 0
    dry = json.loads(cli("run", "propagate", "--local", "--dry-run", "--json").out)
    assert dry["dry_run"] and dry["totals"] == {"due": 1} and receiver.requests == []
    assert dry["counts"] == [{"purpose": "-", "outcome": "due", "count": 1}]
    assert dry["endpoints"][0]["endpoint"] == "crm" and dry["endpoints"][0]["due"] == 1
    # a real run refuses as_of (it would send scheduled retries early) before it starts
    earlier = (utcnow() - timedelta(days=1)).isoformat()
    refused = cli("run", "propagate", "--local", "--as-of", earlier)
    assert refused.code == 2 and "as_of: allowed only with dry_run" in refused.err
    r = cli("run", "propagate", "--local", "--json", "--param", "run_seconds=0.5")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["totals"] == {"delivered": 1} and out["loop"]["slot"] == 0
    assert out["endpoints"][0]["endpoint"] == "crm" and out["endpoints"][0]["delivered"] == 1
    assert len(receiver.at("/h")) == 1

"""Operations end to end on PostgreSQL, with real parts (``conftest.py``): runs asked for from the
API and the CLI run on the worker with who asked; a failing endpoint fails its run and the
operators are alerted through Prefect; a withdrawal committed while the worker's propagate loop
runs arrives verified; a worker killed mid-run leaves nothing stuck and nothing sent twice, and
the operators hear of it through Prefect.

The tests share one server, one deployment set and one worker, in this order: the failing
endpoint's test needs no delivery loop running yet (it checks that), the loop's test starts the
loop, and the kill test (last) kills it and replaces the worker. Every wait is a poll for a
condition with a deadline (``eventually``).
"""

from __future__ import annotations

import functools
import getpass
import re
import subprocess
import sys
import threading
from typing import Any

from sqlmodel import col, select

from consentflow import db, lifecycle
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, Delivery, DeliveryAttempt, System
from tests.operations.conftest import COMPLIANCE, REMINDED, Ops
from tests.support.webhooks import Captured, verify
from tests.support.workers import eventually, flow_runs_of, read_flow_run, state_of

#: Deadlines, in seconds: a run through the worker (poll, process start, the run), and the
#: zombie automation (a heartbeat every 30 s, Crashed 60 s after the last one) plus a restart.
RUN_DEADLINE = 150
CLI = [sys.executable, "-m", "consentflow.cli"]
CRASH_DEADLINE = 180


def entries(ops: Ops, action: str, run_id: str | None = None) -> list[AuditEntry]:
    with db.session_scope(ops.engine, readonly=True) as s:
        query = select(AuditEntry).where(AuditEntry.action == action)
        if run_id is not None:
            query = query.where(AuditEntry.run_id == run_id)
        found = list(s.exec(query.order_by(col(AuditEntry.seq))).all())
        for entry in found:
            s.expunge(entry)
        return found


def final(ops: Ops, run_id: str) -> Any:
    """The run once its state is final on the server."""
    eventually(
        lambda: read_flow_run(ops.server, run_id).state.is_final(),
        RUN_DEADLINE,
        f"run {run_id} ending",
        ops.diagnose,
    )
    return read_flow_run(ops.server, run_id)


def check_ran_on_the_worker(ops: Ops, run_id: str, who: str) -> None:
    """Completed on the worker, tagged with who asked; audited when created and at its end."""
    run = final(ops, run_id)
    assert run.state.type.value == "COMPLETED", (run.state, ops.diagnose())
    assert f"requested-by:{who}" in run.tags
    assert run.work_pool_name == "consentflow-pool" and run.infrastructure_pid
    [asked] = entries(ops, "flow.requested", run_id)
    [ended] = entries(ops, "flow.run", run_id)
    assert asked.actor == who and asked.detail["deployment"] == "expiry-sweep/hourly"
    assert asked.recorded_at <= run.start_time  # recorded at creation, before the worker ran it
    assert asked.seq < ended.seq
    assert ended.detail["outcome"] == "completed" and ended.detail["requested_by"] == who
    assert ended.detail["deployment"] == "expiry-sweep/hourly"
    assert ended.detail["parameters"]["batch_size"] == 100


def test_runs_asked_from_the_api_and_the_cli_run_on_the_worker(ops: Ops) -> None:
    api = ops.api_run("expiry-sweep", {"batch_size": 100})
    assert api["requested_by"] == "api:carol" and api["deployment"] == "expiry-sweep/hourly"
    assert entries(ops, "flow.requested", api["run_id"])  # at once, before any worker took it

    cli = subprocess.run(
        [*CLI, "run", "expiry-sweep", "--batch-size", "100", "--watch"],
        env=ops.cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE + 60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr + ops.diagnose()
    who = f"cli:{getpass.getuser()}"
    created = re.search(r"run ([0-9a-f-]{36}) created on expiry-sweep/hourly", cli.stdout)
    assert created is not None, cli.stdout
    assert f"requested by {who}" in cli.stdout
    assert f"expiry-sweep: completed, run {created[1]}" in cli.stdout

    check_ran_on_the_worker(ops, api["run_id"], "api:carol")
    check_ran_on_the_worker(ops, created[1], who)


def revoke(ops: Ops, subject: str, purpose: str) -> list[str]:
    """Withdraw ``subject``'s consent; the webhook ids of the deliveries it enqueued."""
    with db.session_scope(ops.engine) as s:
        event_id = lifecycle.revoke(s, subject, purpose, Actor()).event_id
    with db.session_scope(ops.engine, readonly=True) as s:
        return list(s.exec(select(Delivery.webhook_id).where(Delivery.event_id == event_id)))


def arrived(ops: Ops, path: str, webhook_id: str) -> Captured | None:
    found = [c for c in ops.receiver.at(path) if c.headers.get("webhook-id") == webhook_id]
    return found[0] if found else None


def alert_about(ops: Ops, *words: str) -> bool:
    """An operator alert holding every one of ``words`` came through Apprise (``/alerts``)."""
    return any(all(w in c.body.decode() for w in words) for c in ops.receiver.at("/alerts"))


def test_a_failing_endpoint_fails_the_run_and_alerts_the_operators(ops: Ops) -> None:
    # Before any delivery loop runs (a loop would take the delivery first, and report the
    # failure only when it ends): a one-pass run (run_seconds=0) of the endpoint.
    assert ops.slots_held() == 0, "this test runs before the tests that start a delivery loop"
    ops.receiver.set("/broken", 500)
    [webhook_id] = revoke(ops, "promo-0", "promo")
    run_id = ops.api_run("propagate", {"run_seconds": 0, "systems": ["broken"]})["run_id"]
    run = final(ops, run_id)
    assert run.state.type.value == "FAILED", run.state
    assert "broken" in (run.state.message or "")
    assert ops.receiver.ids("/broken")[webhook_id] == 1
    [end] = entries(ops, "flow.run", run_id)
    assert end.detail["outcome"] == "failed"
    # Prefect's triggers start operator-alerts for the failing endpoint and for the Failed run.
    for words in (("endpoint broken is failing",), ("propagate run Failed", run_id)):
        eventually(
            functools.partial(alert_about, ops, *words),
            RUN_DEADLINE,
            f"an operator alert saying {words}",
            ops.diagnose,
        )


def test_a_withdrawal_committed_while_the_loop_runs_arrives_verified(ops: Ops) -> None:
    loop = ops.loop()
    for subject in ("news-0", "news-1"):  # the second one while the loop waits for a wake-up
        [webhook_id] = revoke(ops, subject, "news")
        cap = eventually(
            functools.partial(arrived, ops, "/crm", webhook_id),
            RUN_DEADLINE,
            f"the withdrawal of {subject} at the receiver",
            ops.diagnose,
        )
        body = verify(cap, ops.secrets["crm"])  # raises unless the signature is right
        assert body["type"] == "consent.withdrawn", body
        assert ops.receiver.ids("/crm")[webhook_id] == 1
    assert state_of(ops.server, loop) == "RUNNING"  # delivered by the loop, not a new run


def delivered(ops: Ops, system: str) -> dict[str, int]:
    """Webhook id -> the number of 2xx attempts recorded, for the deliveries to ``system``."""
    with db.session_scope(ops.engine, readonly=True) as s:
        rows = s.exec(
            select(Delivery.webhook_id, DeliveryAttempt.status_code)
            .join(System, col(System.id) == Delivery.system_id)
            .join(DeliveryAttempt, col(DeliveryAttempt.delivery_id) == Delivery.id, isouter=True)
            .where(System.name == system)
        ).all()
    out: dict[str, int] = {}
    for webhook_id, status in rows:
        out[webhook_id] = out.get(webhook_id, 0) + int(status is not None and status < 300)
    return out


class Gate:
    """A receiver hook: the first ``passing`` requests are answered at once; the rest wait until
    ``open`` (answered 200 then, to whoever is still listening)."""

    def __init__(self, passing: int) -> None:
        self.passing = passing
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.opened = threading.Event()

    def __call__(self, cap: Captured) -> None:
        with self.lock:
            self.seen.append(cap.headers["webhook-id"])
            held = len(self.seen) > self.passing
        if held:
            self.opened.wait(120)

    def answered(self) -> list[str]:
        with self.lock:
            return self.seen[: self.passing]

    def held(self) -> int:
        with self.lock:
            return max(0, len(self.seen) - self.passing) if not self.opened.is_set() else 0


def crashed(ops: Ops, run_id: str) -> Any:
    """The run once the zombie automation marked it Crashed."""
    eventually(
        lambda: state_of(ops.server, run_id) == "CRASHED",
        CRASH_DEADLINE,
        f"run {run_id} marked Crashed",
        lambda: f"state: {state_of(ops.server, run_id)}\n{ops.diagnose()}",
    )
    return read_flow_run(ops.server, run_id)


def hold_in_flight(ops: Ops) -> tuple[str, Gate, list[str]]:
    """A reminders run held at the mail server and six withdrawals for the slow endpoint, three
    answered (and recorded) and the rest in flight: the reminders run id, the gate, the ids."""
    ops.sink.handler.held.add(REMINDED)
    reminders = ops.api_run("renewal-reminders", {})["run_id"]
    eventually(
        lambda: ops.sink.handler.waiting >= 1 and state_of(ops.server, reminders) == "RUNNING",
        RUN_DEADLINE,
        "the reminders run sending its email",
        ops.diagnose,
    )
    gate = Gate(passing=3)
    ops.receiver.set("/slow", hook=gate)
    ids = [webhook_id for i in range(6) for webhook_id in revoke(ops, f"ads-{i}", "ads")]
    assert len(ids) == 6
    eventually(
        lambda: sum(delivered(ops, "slow").values()) == 3 and gate.held() >= 1,
        60,
        "three deliveries answered and recorded, the others in flight",
        lambda: f"recorded: {delivered(ops, 'slow')}, gate: {gate.seen}\n{ops.diagnose()}",
    )
    return reminders, gate, ids


def test_a_killed_worker_leaves_nothing_stuck_and_nothing_sent_twice(ops: Ops) -> None:
    loop = ops.loop()
    reminders, gate, ids = hold_in_flight(ops)
    answered = gate.answered()
    assert ops.worker is not None and ops.worker.flow_run_processes(), "runs under the worker"
    before = {str(r.id) for r in flow_runs_of(ops.server, "propagate")}
    ops.worker.kill()
    gate.opened.set()  # what was in flight is answered now, to nobody
    ops.new_worker()

    # The zombie automation marks both runs Crashed (their heartbeats stopped) ...
    for run_id in (loop, reminders):
        assert "No heartbeat" in (crashed(ops, run_id).state.message or "")
    # (the reminders deployment's next run is asked for now, so that the new worker starts its
    # process while the new propagate run starts: checked below)
    again = ops.api_run("renewal-reminders", {})["run_id"]
    # ... the Crashed trigger starts a new propagate run, which takes the free slot and loops:
    # every withdrawal is delivered, those in flight once their lease has passed.
    eventually(
        lambda: delivered(ops, "slow") == dict.fromkeys(ids, 1),
        CRASH_DEADLINE,
        "every withdrawal delivered, each with one 2xx attempt recorded",
        lambda: f"recorded: {delivered(ops, 'slow')}\n{ops.diagnose()}",
    )
    after = [r for r in flow_runs_of(ops.server, "propagate") if str(r.id) not in before]
    assert [r.state.type.value for r in after] == ["RUNNING"]
    assert ops.slots_held() == 1
    # Nothing sent twice: an answered delivery never again; one in flight at most once more.
    sent = ops.receiver.ids("/slow")
    assert set(sent) == set(ids)
    assert all(sent[webhook_id] == 1 for webhook_id in answered), (answered, sent)
    assert all(n <= 2 for n in sent.values()), sent

    # Nothing stuck: the reminders deployment (one run at a time) runs its next run, which does
    # not send again the email the crashed run was sending (the mail server still holds that
    # one: a second attempt would be held too, and counted).
    assert final(ops, again).state.type.value == "COMPLETED", ops.diagnose()
    assert ops.sink.handler.waiting == 1 and not ops.sink.to(REMINDED)

    # The crashes are on record, and the operators were told through Prefect.
    for run_id in (loop, reminders):
        [end] = eventually(
            functools.partial(entries, ops, "flow.run", run_id),
            RUN_DEADLINE,
            f"the end entry of {run_id}",
        )
        assert end.detail["outcome"] == "crashed" and end.detail["requested_by"] == "api:carol"
        eventually(
            functools.partial(alert_about, ops, run_id, "Crashed"),
            RUN_DEADLINE,
            f"an alert about {run_id}",
        )
    eventually(
        lambda: (
            len([m for m in ops.sink.to(COMPLIANCE) if "Crashed" in str(m.message["subject"])]) >= 2
        ),
        RUN_DEADLINE,
        "two crash alerts by email to compliance",
    )

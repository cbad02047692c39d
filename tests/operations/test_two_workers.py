"""Two Prefect workers on one pool, one Prefect server, one PostgreSQL: they share the work and
each item is done exactly once (issue 11).

The module's set-up is ``conftest.py``'s (its own database, server and ``consentflow deploy``);
the fixture's worker is replaced by TWO ``prefect worker start`` processes, named, each taking
one flow run at a time (``--limit 1``), polling the same pool at once. The lifecycle deployments'
concurrency limit (one run at a time, as shipped) is raised for the runs asked for here, so that
several runs of one deployment run at once, as an operator does to let several workers share a
sweep.

Each scenario proves that both workers worked *at the same time on the same queue*, without
relying on timing: something every run needs is held until the two runs are both inside it, and
with one run per worker, two runs inside it are two workers:

* the expiry sweep: the test holds ``consent_event`` (``LOCK TABLE ... EXCLUSIVE``), so a batch
  that has claimed its consents waits to write their history; released once two sessions wait;
* propagation (one-pass runs): the receiver holds its requests; a run has at most
  ``per_endpoint`` (4) requests in flight, so five held at once are two runs; released then;
* renewal reminders: the SMTP sink holds the DATA stage; a run has at most its SMTP pool (2)
  messages in flight, so three held are two runs; released then.

Then: every consent expired once (one history row, one audit entry, one delivery each), every
webhook received once with a valid signature (one 2xx attempt recorded each), every reminder
sent once, nothing left claimed or leased; which worker ran each run is the run's
``prefect.worker.name`` label, and every worker's runs did some of the items (the runs' end
entries count them).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, text
from sqlmodel import col, select

from consentflow import db, purposes, systems
from consentflow.models import (
    AuditEntry,
    Consent,
    ConsentEvent,
    Delivery,
    DeliveryAttempt,
    EmailMessage,
    Purpose,
    Subject,
    System,
    utcnow,
)
from tests.operations.conftest import POOL, REMINDED, Ops
from tests.support.seeding import give, import_subjects, verify_audit
from tests.support.webhooks import Captured, verify
from tests.support.workers import Worker, eventually, read_flow_run

pytestmark = pytest.mark.postgres_only

#: The two workers' names (``prefect worker start --name``), as the runs' labels carry them.
NAMES = ("worker-a", "worker-b")
#: Consents due for expiry (each one delivery to ``bulk``) and renewal reminders due.
EXPIRING = 300
REMINDING = 30
#: Runs asked for at once, per scenario: one for each worker.
RUNS = 2
#: A run through a worker: poll, process start, the run (a busy two-core machine).
RUN_DEADLINE = 180
#: What one run has in flight at most: its SMTP pool's messages, ``per_endpoint`` requests.
SMTP_POOL = 2
PER_ENDPOINT = 4


@pytest.fixture(scope="module")
def workers(ops: Ops) -> Iterator[list[Worker]]:
    """The fixture's worker replaced by two named ones, one run at a time each."""
    assert ops.worker is not None
    ops.worker.stop()
    env = ops.worker_env()
    # A held request or message must not time out (a timed-out one would be sent again).
    env.update(CONSENTFLOW_WEBHOOK_TIMEOUT="120", CONSENTFLOW_SMTP_POOL_SIZE=str(SMTP_POOL))
    started = [
        Worker(env, ops.root / f"{name}.log", POOL, ["--name", name, "--limit", "1"]).start()
        for name in NAMES
    ]
    ops.worker = started[0]  # stopped by the fixture's teardown too
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def ledger(ops: Ops) -> dict[str, Any]:
    """``EXPIRING`` consents of purpose ``bulk`` whose validity ended yesterday (system ``bulk``
    at ``/bulk`` subscribed), ``REMINDING`` of purpose ``renew`` ending in 5 days (a reminder
    due, to ``renew-I@example.com``). The ``bulk`` secret and the reminded addresses."""
    with db.session_scope(ops.engine) as s:
        purposes.add(s, "bulk", title="Bulk offers", validity_days=365)
        purposes.add(s, "renew", title="Renewal offers", validity_days=365)
        _, secret = systems.add(s, "bulk", ["bulk"], webhook_url=ops.receiver.url("/bulk"))
    now = utcnow()
    expiring = import_subjects(ops.engine, EXPIRING, prefix="bulk-", email=False, locale=None)
    give(ops.engine, expiring, "bulk", now - timedelta(days=1))
    reminded = import_subjects(ops.engine, REMINDING, prefix="renew-")
    give(ops.engine, reminded, "renew", now + timedelta(days=5))
    addresses = {f"renew-{i}@example.com" for i in range(REMINDING)}
    return {"secret": secret, "addresses": addresses | {REMINDED}}


def allow_runs_at_once(ops: Ops, deployment: str, limit: int) -> None:
    """Raise a deployment's concurrency limit (what an operator does for several workers)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with ops.server.settings(), get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        client.update_deployment(found.id, DeploymentUpdate(concurrency_limit=limit))


def ask(ops: Ops, flow: str, parameters: dict[str, Any], n: int = RUNS) -> list[str]:
    return [ops.api_run(flow, parameters)["run_id"] for _ in range(n)]


def completed(ops: Ops, run_ids: list[str]) -> dict[str, str]:
    """Run id -> the worker that ran it, once every run completed."""
    for run_id in run_ids:
        eventually(
            lambda run_id=run_id: read_flow_run(ops.server, run_id).state.is_final(),
            RUN_DEADLINE,
            f"run {run_id} ending",
            lambda: diagnose(ops),
        )
    ran = {}
    for run_id in run_ids:
        run = read_flow_run(ops.server, run_id)
        assert run.state.type.value == "COMPLETED", (run.state, diagnose(ops))
        ran[run_id] = run.labels.get("prefect.worker.name")
    return ran


def done_by_worker(ops: Ops, ran: dict[str, str], outcome: str) -> Counter[str]:
    """Items with ``outcome`` by worker, from the runs' end entries (``flow.run``)."""
    with db.session_scope(ops.engine, readonly=True) as s:
        ends = s.exec(
            select(AuditEntry.run_id, AuditEntry.detail).where(
                AuditEntry.action == "flow.run", col(AuditEntry.run_id).in_(list(ran))
            )
        ).all()
    assert len(ends) == len(ran), ends  # one end entry per run
    out: Counter[str] = Counter()
    for run_id, detail in ends:
        out[ran[str(run_id)]] += int(detail["totals"].get(outcome, 0))
    return out


def diagnose(ops: Ops) -> str:
    """The last lines of each worker's log and of the server's."""
    out = []
    for log in sorted(ops.root.glob("worker-*.log")):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        out.append(f"--- {log.name}:\n" + "\n".join(lines[-15:]))
    return "\n".join([*out, f"--- server:\n{ops.server.log_tail(10)}"])


def sessions_waiting(ops: Ops) -> int:
    """Sessions on this module's database waiting for a lock."""
    with ops.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = :name AND wait_event_type = 'Lock'"
                ),
                {"name": ops.database},
            ).scalar_one()
        )


def test_two_workers_share_an_expiry_sweep_and_expire_each_consent_once(
    ops: Ops, workers: list[Worker], ledger: dict[str, Any]
) -> None:
    allow_runs_at_once(ops, "expiry-sweep/hourly", RUNS)
    with ops.engine.connect() as hold:
        hold.execute(text("LOCK TABLE consent_event IN EXCLUSIVE MODE"))
        runs = ask(ops, "expiry-sweep", {"batch_size": 25})
        eventually(
            lambda: sessions_waiting(ops) >= 2,
            RUN_DEADLINE,
            "two sweep batches (one per worker) waiting to write their history at once",
            lambda: diagnose(ops),
        )
        hold.rollback()  # releases the table: both batches go on
    ran = completed(ops, runs)
    assert set(ran.values()) == set(NAMES), ran

    with db.session_scope(ops.engine, readonly=True) as s:
        bulk = s.exec(select(Purpose.id).where(Purpose.key == "bulk")).one()
        states = Counter(s.exec(select(Consent.state).where(Consent.purpose_id == bulk)).all())
        history = Counter(
            s.exec(
                select(ConsentEvent.subject_id).where(
                    ConsentEvent.purpose_id == bulk, ConsentEvent.action == "expire"
                )
            ).all()
        )
        audited = Counter(
            s.exec(
                select(AuditEntry.subject_ref).where(
                    AuditEntry.action == "consent.expire", AuditEntry.purpose_key == "bulk"
                )
            ).all()
        )
        queued = s.exec(
            select(func.count())
            .select_from(Delivery)
            .join(System, col(System.id) == Delivery.system_id)
            .where(System.name == "bulk", Delivery.event_type == "consent.expired")
        ).one()
    assert states == {"expired": EXPIRING}
    assert len(history) == EXPIRING and set(history.values()) == {1}
    assert len(audited) == EXPIRING and set(audited.values()) == {1}
    assert queued == EXPIRING
    by_worker = done_by_worker(ops, ran, "expired")
    assert sum(by_worker.values()) == EXPIRING, by_worker  # no consent counted twice
    assert all(by_worker[name] > 0 for name in NAMES), by_worker
    verify_audit(ops.engine)


class Hold:
    """A receiver hook: requests wait until ``at_once`` of them wait together (then all go)."""

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self.waiting = 0
        self.lock = threading.Lock()
        self.open = threading.Event()

    def __call__(self, cap: Captured) -> None:
        with self.lock:
            self.waiting += 1
            if self.waiting >= self.at_once:
                self.open.set()
        self.open.wait(100)  # below the workers' webhook timeout: never sent twice


def undelivered(ops: Ops) -> int:
    with db.session_scope(ops.engine, readonly=True) as s:
        return int(
            s.exec(
                select(func.count()).select_from(Delivery).where(Delivery.state != "delivered")
            ).one()
        )


def test_two_workers_share_propagation_and_deliver_each_webhook_once(
    ops: Ops, workers: list[Worker], ledger: dict[str, Any]
) -> None:
    assert undelivered(ops) >= EXPIRING, "runs after the expiry test, which enqueues them"
    hold = Hold(PER_ENDPOINT + 1)
    ops.receiver.set("/bulk", hook=hold)
    # One pass each (no loop slot, no loop-ended event); a run claims for a few seconds only,
    # so each claim takes half the queue: the two runs deliver it all, and none is needed after.
    one_pass = {
        "run_seconds": 0,
        "systems": ["bulk"],
        "per_endpoint": PER_ENDPOINT,
        "batch_size": EXPIRING // 2,
    }
    runs = ask(ops, "propagate", one_pass)
    eventually(
        hold.open.is_set,
        RUN_DEADLINE,
        f"{PER_ENDPOINT + 1} requests held at once (two runs, one per worker, sending)",
        lambda: diagnose(ops),
    )

    def drained() -> bool:
        """All delivered; else, once every run ended, two more (not expected: the two runs'
        claims take the whole queue, but a run claims for a few seconds only)."""
        if undelivered(ops) == 0:
            return True
        if all(read_flow_run(ops.server, r).state.is_final() for r in runs):
            runs.extend(ask(ops, "propagate", one_pass, len(NAMES)))
        return False

    eventually(drained, RUN_DEADLINE * 2, "every delivery delivered", lambda: diagnose(ops))
    ran = completed(ops, runs)
    assert set(ran.values()) == set(NAMES), ran

    with db.session_scope(ops.engine, readonly=True) as s:
        rows = s.exec(
            select(Delivery.webhook_id, Delivery.leased_until, DeliveryAttempt.status_code)
            .join(System, col(System.id) == Delivery.system_id)
            .join(DeliveryAttempt, col(DeliveryAttempt.delivery_id) == Delivery.id)
            .where(System.name == "bulk")
        ).all()
    attempts = Counter(webhook_id for webhook_id, _, _ in rows)
    assert len(attempts) == EXPIRING and set(attempts.values()) == {1}  # one attempt each
    assert {status for _, _, status in rows} == {200}
    received = ops.receiver.ids("/bulk")
    assert set(received) == set(attempts) and set(received.values()) == {1}, received
    for cap in ops.receiver.at("/bulk"):
        assert verify(cap, ledger["secret"])["type"] == "consent.expired"
    by_worker = done_by_worker(ops, ran, "delivered")
    assert sum(by_worker.values()) == EXPIRING, by_worker
    assert all(by_worker[name] > 0 for name in NAMES), by_worker


def test_two_workers_share_renewal_reminders_and_send_each_once(
    ops: Ops, workers: list[Worker], ledger: dict[str, Any]
) -> None:
    allow_runs_at_once(ops, "renewal-reminders/daily", RUNS)
    addresses: set[str] = ledger["addresses"]
    ops.sink.handler.held |= addresses
    runs = ask(ops, "renewal-reminders", {"batch_size": 5})
    eventually(
        lambda: ops.sink.handler.waiting >= SMTP_POOL + 1,
        RUN_DEADLINE,
        f"{SMTP_POOL + 1} messages held at once (two runs, one per worker, sending)",
        lambda: diagnose(ops),
    )
    ops.sink.handler.gate.set()
    ran = completed(ops, runs)
    assert set(ran.values()) == set(NAMES), ran

    sent = Counter(r for m in ops.sink.received for r in m.recipients if r in addresses)
    assert set(sent) == addresses and set(sent.values()) == {1}, sent
    with db.session_scope(ops.engine, readonly=True) as s:
        statuses = Counter(
            s.exec(select(EmailMessage.status).where(EmailMessage.kind == "renewal_reminder")).all()
        )
        not_advanced = s.exec(
            select(func.count())
            .select_from(Consent)
            .join(Subject, col(Subject.id) == Consent.subject_id)
            .where(col(Subject.email).in_(sorted(addresses)), col(Consent.reminder_stage).is_(None))
        ).one()
    assert statuses == {"sent": len(addresses)}  # one message each, nothing left claimed
    assert not_advanced == 0  # every reminded consent's stage recorded
    by_worker = done_by_worker(ops, ran, "sent")
    assert sum(by_worker.values()) == len(addresses), by_worker
    assert all(by_worker[name] > 0 for name in NAMES), by_worker
    verify_audit(ops.engine)

"""Real worker processes: two sharing a queue on PostgreSQL, and one killed mid-delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlmodel import func, select

from consentflow import db
from consentflow.delivery import engine as eng
from consentflow.models import Delivery, utcnow
from tests.support.webhooks import bulk_withdrawals, ledger, revoke, verify

WORKER = """
import json, sys
from consentflow import db
from consentflow.delivery import engine as e
url, batch, per_endpoint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = db.make_engine(url)
print("ready", flush=True)
sys.stdin.readline()
report = e.deliver_due(
    engine, options=e.Options(batch_size=batch, per_endpoint=per_endpoint, timeout=20)
)
print(json.dumps({"delivered": report.total("delivered"), "lost": report.total("lease_lost")}))
"""


pytestmark = pytest.mark.usefixtures("allow_loopback")


def start_worker(url: str, batch: int = 25, per_endpoint: int = 8) -> subprocess.Popen[str]:
    env = dict(os.environ, CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
    p = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(batch), str(per_endpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def counts(engine) -> dict[str, int]:
    with db.session_scope(engine) as s:
        rows = s.exec(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return dict(rows)


@pytest.mark.postgres_only
def test_two_workers_share_1000_deliveries_each_delivered_once(pg_engine, receiver):
    url = pg_engine.url.render_as_string(hide_password=False)
    secret = bulk_withdrawals(pg_engine, receiver, "/bulk", 1000)
    assert counts(pg_engine) == {"pending": 1000}
    workers = [start_worker(url), start_worker(url)]
    for w in workers:  # both are ready: let them go at once
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    ids = receiver.ids("/bulk")
    assert len(ids) == 1000 and set(ids.values()) == {1}  # each webhook-id exactly once
    assert counts(pg_engine) == {"delivered": 1000}
    assert sum(r["delivered"] for r in results) == 1000
    assert all(r["delivered"] > 0 for r in results), results  # both did real work
    assert all(r["lost"] == 0 for r in results)
    for req in receiver.at("/bulk")[:50]:
        verify(req, secret)


def test_worker_process_killed_mid_delivery_then_restarted(engine, database_url, receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=4)
    in_flight = threading.Event()
    receiver.set("/hook", status=200, hang=True, hook=lambda cap: in_flight.set())
    revoke(engine, 4)
    worker = start_worker(database_url, batch=10, per_endpoint=2)
    assert worker.stdin is not None
    worker.stdin.write("go\n")
    worker.stdin.flush()
    assert in_flight.wait(60)  # it has claimed the batch and is sending
    worker.kill()
    worker.communicate(timeout=30)
    assert counts(engine) == {"pending": 4}  # claimed, nothing recorded: nothing lost
    with db.session_scope(engine) as s:
        assert all(d.leased_until for d in s.exec(select(Delivery)).all())
    receiver.set("/hook", status=200)
    # a restarted worker leaves live leases alone...
    assert eng.deliver_due(engine, options=eng.Options(timeout=5)).total() == 0
    # ...and takes the rows over once the lease has run out
    later = utcnow() + eng.Options().lease_for() + timedelta(seconds=1)
    report = eng.deliver_due(engine, options=eng.Options(timeout=5), now=later)
    assert report.total(eng.DELIVERED) == 4
    assert counts(engine) == {"delivered": 4}
    assert len(receiver.ids("/hook")) == 4  # the interrupted ones were resent with the same id

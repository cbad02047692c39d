"""Benchmark: one ``/metrics`` scrape (``reports.metrics.exposition``) at a million consents.

Not a test. It fills a fresh database like ``bench/dashboard.py`` (N consents), then adds the
history a busy year leaves in the tables the scrape reads: ``--deliveries`` delivered webhooks
with one attempt each (and a failed first attempt for one in ten), ``--emails`` recorded consent
emails and ``--runs`` ``flow.run`` audit entries (written straight into the table, outside the
hash chain, which the scrape does not read). It prints the scrape's time next to reading every
consent once, the same baseline as the dashboard benchmark.

    python bench/metrics.py                                  # SQLite file in a temp dir
    python bench/metrics.py --url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select, text

from consentflow import db, systems
from consentflow.models import (
    AuditEntry,
    ConsentEvent,
    Delivery,
    DeliveryAttempt,
    EmailMessage,
    utcnow,
)
from consentflow.reports import metrics

sys.path.insert(0, str(Path(__file__).parent))
from dashboard import fill, timed

FLOWS = ["propagate", "expiry-sweep", "renewal-reminders", "collection-followups", "reconsent"]


def history(engine, deliveries: int, emails: int, runs: int, batch: int = 20000) -> None:
    rng = random.Random(3)
    now = utcnow()
    with db.session_scope(engine) as s:
        erp = systems.add(s, "erp", ["news"], webhook_url="https://erp.example.com/h")[0].id
    with db.session_scope(engine, readonly=True) as s:
        first_event = s.execute(text("SELECT max(seq) FROM audit_entry")).scalar() or 0
        events = list(s.scalars(select(ConsentEvent.id).limit(deliveries)))
    for start in range(0, deliveries, batch):
        rows, attempts = [], []
        for i in range(start, min(start + batch, deliveries, len(events))):
            at = now - timedelta(days=rng.uniform(0, 360))
            rows.append(
                {
                    "id": 10_000_000 + i,
                    "system_id": erp,
                    "event_id": events[i],
                    "webhook_id": f"msg_{uuid.uuid4().hex}",
                    "event_type": "consent.withdrawn",
                    "payload": "{}",
                    "state": "delivered",
                    "attempts": 1,
                    "next_attempt_at": at,
                    "created_at": at,
                    "delivered_at": at,
                }
            )
            tries = [500, 200] if rng.random() < 0.1 else [200]
            for n, status in enumerate(tries, start=1):
                attempts.append(
                    {
                        "delivery_id": 10_000_000 + i,
                        "attempt": n,
                        "started_at": at,
                        "status_code": status,
                        "latency_ms": 40,
                    }
                )
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(Delivery.__table__), rows)
                conn.execute(insert(DeliveryAttempt.__table__), attempts)
    kinds = ["renewal_reminder", "collection_followup", "reconsent_request"]
    statuses = ["sent"] * 90 + ["deferred"] * 6 + ["bounced"] * 3 + ["failed"]
    for start in range(0, emails, batch):
        rows = [
            {
                "message_id": f"<{uuid.uuid4().hex}@bench>",
                "subject_id": 2 + i % 1000,
                "kind": rng.choice(kinds),
                "status": rng.choice(statuses),
                "created_at": now,
            }
            for i in range(start, min(start + batch, emails))
        ]
        with engine.begin() as conn:
            conn.execute(insert(EmailMessage.__table__), rows)
    for start in range(0, runs, batch):
        rows = []
        for i in range(start, min(start + batch, runs)):
            end = now - timedelta(minutes=5 * (runs - i))
            took = timedelta(seconds=rng.uniform(1, 320))
            detail = {
                "flow": FLOWS[0] if i % 10 else rng.choice(FLOWS),
                "outcome": "completed" if rng.random() < 0.97 else "failed",
                "started_at": (end - took).isoformat(),
                "finished_at": end.isoformat(),
                "totals": {},
            }
            rows.append(
                {
                    "seq": first_event + 1 + i,
                    "recorded_at": end,
                    "action": "flow.run",
                    "detail": detail,
                    "prev_hash": "0" * 64,
                    "hash": "0" * 64,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(AuditEntry.__table__), rows)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(f"history: {deliveries:,} deliveries, {emails:,} emails, {runs:,} flow runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--consents", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=200_000)
    parser.add_argument("--emails", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=105_000, help="a year of 5-minute loops")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    fill(engine, args.consents)
    history(engine, args.deliveries, args.emails, args.runs)

    def count() -> None:
        with db.session_scope(engine, readonly=True) as s:
            s.execute(text("SELECT SUM(purpose_version) FROM consent")).one()

    def scrape() -> None:
        with db.session_scope(engine, readonly=True) as s:
            metrics.exposition(s)

    scan = timed(count, 3)
    took = timed(scrape, 5)
    print(f"baseline: reading every consent once: {scan * 1000:.0f} ms")
    print(f"one /metrics scrape:                  {took * 1000:.0f} ms ({took / scan:.2f}x)")
    with db.session_scope(engine, readonly=True) as s:
        systems_ = metrics._Systems.read(s)
        parts = {
            "deliveries": lambda: metrics._deliveries(s, systems_),
            "outbox": lambda: list(metrics._outbox(s, systems_, utcnow())),
            "emails": lambda: list(metrics._emails(s)),
            "runs": lambda: list(metrics._runs(s)),
        }
        for name, part in parts.items():
            print(f"  {name:<12} {timed(part, 3) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()

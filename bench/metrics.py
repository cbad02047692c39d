"""Benchmark: one ``/metrics`` scrape (``reports.metrics.exposition``) at a million consents.

Not a test. It fills a fresh database like ``bench/dashboard.py`` (N consents), then adds the
history a busy year leaves in the tables the scrape reads: ``--deliveries`` delivered webhooks
with one attempt each (and a failed first attempt for one in ten), ``--emails`` recorded consent
emails and ``--runs`` ``flow.run`` audit entries (written straight into the table, outside the
hash chain, with ``audit_head`` moved to the last one as an append would). It prints, next to
reading every consent once (the dashboard benchmark's baseline):

- the first scrape of a process (``reports._totals`` folds the whole history once);
- a scrape with nothing new, and one after a scrape interval's activity (``--new`` attempts,
  emails and three flow runs committed since the previous scrape): what Prometheus pays.

    python bench/metrics.py                                  # SQLite file in a temp dir
    python bench/metrics.py --url postgresql://postgres@127.0.0.1:5432/bench
    python bench/metrics.py --url sqlite:///kept.db --reuse  # a database filled before
"""

from __future__ import annotations

import argparse
import random
import statistics
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
from consentflow.reports import _totals, metrics

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
    head_to_top(engine)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(f"history: {deliveries:,} deliveries, {emails:,} emails, {runs:,} flow runs")


def head_to_top(engine) -> None:
    """``audit_head`` at the last entry, as if the bench's entries had been appended."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_head SET seq = (SELECT max(seq) FROM audit_entry), "
                "hash = (SELECT hash FROM audit_entry ORDER BY seq DESC LIMIT 1) WHERE id = 1"
            )
        )


def activity(engine, new: int) -> None:
    """A scrape interval's worth of writes: ``new`` delivery attempts (more tries of the last
    delivery), ``new`` recorded emails and three flow runs, after everything there is."""
    now = utcnow()
    with engine.begin() as conn:
        last = conn.execute(text("SELECT max(id) FROM delivery")).scalar()
        seq = conn.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar() or 0
        conn.execute(
            insert(DeliveryAttempt.__table__),
            [
                {"delivery_id": last, "attempt": 2 + i, "started_at": now, "status_code": 200}
                for i in range(new)
            ],
        )
        conn.execute(
            insert(EmailMessage.__table__),
            [
                {
                    "message_id": f"<{uuid.uuid4().hex}@bench>",
                    "subject_id": 2,
                    "kind": "renewal_reminder",
                    "status": "sent",
                    "created_at": now,
                }
                for _ in range(new)
            ],
        )
        detail = {"flow": "propagate", "outcome": "completed", "totals": {}}
        detail |= {"started_at": now.isoformat(), "finished_at": now.isoformat()}
        conn.execute(
            insert(AuditEntry.__table__),
            [
                {
                    "seq": seq + k,
                    "recorded_at": now,
                    "action": "flow.run",
                    "detail": detail,
                    "prev_hash": "0" * 64,
                    "hash": "0" * 64,
                }
                for k in (1, 2, 3)
            ],
        )
    head_to_top(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--reuse", action="store_true", help="the database is filled already")
    parser.add_argument("--consents", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=200_000)
    parser.add_argument("--emails", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=105_000, help="a year of 5-minute loops")
    parser.add_argument("--new", type=int, default=100, help="attempts and emails per interval")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    if args.reuse:
        head_to_top(engine)
    else:
        fill(engine, args.consents)
        history(engine, args.deliveries, args.emails, args.runs)

    def count() -> None:
        with db.session_scope(engine, readonly=True) as s:
            s.execute(text("SELECT SUM(purpose_version) FROM consent")).one()

    def scrape() -> None:
        with db.session_scope(engine, readonly=True) as s:
            metrics.exposition(s)

    def cold() -> None:
        _totals.forget()  # what a process that never scraped has
        scrape()

    scan = timed(count, 3)
    first = timed(cold, 3)
    idle = timed(scrape, 5)
    busy = []
    for _ in range(5):
        activity(engine, args.new)
        busy.append(timed(scrape, 1))
    took = statistics.median(busy)
    print(f"baseline: reading every consent once: {scan * 1000:.0f} ms")
    print(f"first scrape of a process:            {first * 1000:.0f} ms ({first / scan:.2f}x)")
    print(f"a scrape, nothing new:                {idle * 1000:.0f} ms ({idle / scan:.2f}x)")
    print(
        f"a scrape after {args.new} attempts, {args.new} emails, 3 runs: "
        f"{took * 1000:.0f} ms ({took / scan:.2f}x)"
    )


if __name__ == "__main__":
    main()

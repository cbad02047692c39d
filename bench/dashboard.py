"""Benchmark: the compliance dashboard and the access check with a million consents.

Not a test. It fills a fresh database with N consents (default 1,000,000: 200,000 subjects x 5
purposes), one history event each plus withdrawals, open requests and pending deliveries, then
times the whole dashboard (every table) and the access check. Absolute times depend on the
machine, so each is also printed as a ratio to a baseline measured in the same run: reading every
consent once (``SELECT SUM(purpose_version) FROM consent``) for the dashboard, ``SELECT 1`` for a
check.

    python bench/dashboard.py                                  # SQLite file in a temp dir
    python bench/dashboard.py --url postgresql://postgres@127.0.0.1:5432/bench --consents 200000
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, text

from consentflow import access, db, purposes, subjects, systems
from consentflow import reports as dashboard
from consentflow.models import (
    Consent,
    ConsentEvent,
    ConsentRequest,
    Delivery,
    Subject,
    utcnow,
)
from consentflow.web import delivery_ops

PURPOSES = ["news", "offers", "profiling", "partners", "research"]


def fill(engine, n_consents: int, batch: int = 20000) -> None:
    rng = random.Random(42)
    now = utcnow()
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES[:3], webhook_url="https://crm.example.com/h")
        subjects.add(s, "probe")
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="News, revised")
        pids = {k: i.id for k, i in purposes.info(s).items()}
    n_subjects = n_consents // len(PURPOSES)
    mix = {"given": 80, "withdrawn": 8, "refused": 5, "requested": 4, "expired": 3}
    states = [state for state, weight in mix.items() for _ in range(weight)]
    started = time.perf_counter()
    for first in range(0, n_subjects, batch):
        ids = range(first + 2, min(first + batch, n_subjects) + 2)  # id 1 is "probe"
        subject_rows, consent_rows, event_rows, request_rows, delivery_rows = [], [], [], [], []
        for sid in ids:
            subject_rows.append(
                {
                    "id": sid,
                    "external_id": f"u{sid}",
                    "subject_ref": uuid.uuid4().hex,
                    "locale": "en",
                    "last_seq": len(PURPOSES),
                    "created_at": now,
                }
            )
            for seq, key in enumerate(PURPOSES, start=1):
                state = rng.choice(states)
                at = now - timedelta(days=rng.uniform(0, 360), seconds=rng.uniform(0, 86400))
                event_id = uuid.uuid4()
                given = state in ("given", "expired")
                valid = at + timedelta(days=365) if given else None
                version = 1 if key != "news" or rng.random() < 0.5 else 2
                consent_rows.append(
                    {
                        "subject_id": sid,
                        "purpose_id": pids[key],
                        "state": state,
                        "purpose_version": version,
                        "given_at": at if given else None,
                        "valid_until": valid,
                        "updated_at": at,
                        "last_event_id": event_id,
                    }
                )
                action = {
                    "given": "grant",
                    "withdrawn": "revoke",
                    "refused": "refuse",
                    "requested": "request",
                    "expired": "expire",
                }[state]
                event_rows.append(
                    {
                        "id": event_id,
                        "subject_id": sid,
                        "purpose_id": pids[key],
                        "seq": seq,
                        "action": action,
                        "state": state,
                        "purpose_version": version,
                        "occurred_at": at,
                        "recorded_at": at,
                        "valid_until": valid,
                        "actor_type": "subject",
                        "channel": "web",
                    }
                )
                if state == "requested" or (key == "news" and version == 1 and state == "given"):
                    request_rows.append(
                        {
                            "subject_id": sid,
                            "purpose_id": pids[key],
                            "purpose_version": 2 if key == "news" else 1,
                            "kind": "reconsent" if state == "given" else "collection",
                            "status": "open",
                            "requested_at": at,
                            "deadline": now + timedelta(days=rng.randint(1, 60)),
                            "followups_sent": 0,
                        }
                    )
                if state == "withdrawn" and key in PURPOSES[:3] and rng.random() < 0.1:
                    delivery_rows.append(
                        {
                            "system_id": 1,
                            "event_id": event_id,
                            "webhook_id": f"msg_{uuid.uuid4().hex}",
                            "event_type": "consent.withdrawn",
                            "payload": "{}",
                            "state": "pending",
                            "attempts": rng.choice([0, 0, 1, 3]),
                            "next_attempt_at": now,
                            "created_at": at,
                        }
                    )
        with engine.begin() as conn:
            conn.execute(insert(Subject.__table__), subject_rows)
            conn.execute(insert(Consent.__table__), consent_rows)
            conn.execute(insert(ConsentEvent.__table__), event_rows)
            if request_rows:
                conn.execute(insert(ConsentRequest.__table__), request_rows)
            if delivery_rows:
                conn.execute(insert(Delivery.__table__), delivery_rows)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('subject_id_seq', (SELECT max(id) FROM subject))"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    print(f"filled {n_consents:,} consents in {time.perf_counter() - started:.1f}s")


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--consents", type=int, default=1_000_000)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    fill(engine, args.consents)

    def count() -> None:
        with db.session_scope(engine) as s:
            s.execute(text("SELECT SUM(purpose_version) FROM consent")).one()

    def page() -> None:
        with db.session_scope(engine) as s:
            dashboard.build(s, health=delivery_ops.health)

    def ping() -> None:
        with db.session_scope(engine) as s:
            s.execute(text("SELECT 1")).one()

    rng = random.Random(7)

    def check() -> None:
        with db.session_scope(engine) as s:
            access.check(s, f"u{rng.randint(2, args.consents // 5)}", "news", "crm")

    scan = timed(count, 3)
    full = timed(page, 3)
    print(f"baseline: reading every consent once:        {scan * 1000:.0f} ms")
    print(f"dashboard, every table:                      {full * 1000:.0f} ms ({full / scan:.1f}x)")
    with db.session_scope(engine) as s:
        now = utcnow()
        for name in dashboard.TABLES:
            t = timed(
                lambda name=name: dashboard.table(s, name, now, health=delivery_ops.health), 1
            )
            print(f"  {name:<22} {t * 1000:8.0f} ms ({t / scan:.2f}x)")
    base = timed(ping, 200)
    one = timed(check, 500)
    print(f"baseline: SELECT 1 in a transaction: {base * 1e6:.0f} us")
    print(f"access check (index lookups):        {one * 1e6:.0f} us ({one / base:.1f}x)")


if __name__ == "__main__":
    main()

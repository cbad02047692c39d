"""Two sweeps at once on PostgreSQL, in two processes: no item is done twice, none is missed."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import select

from consentflow import db, purposes, systems
from consentflow.models import ConsentEvent, Delivery, EmailMessage, utcnow
from tests.support.seeding import count, give, import_subjects, verify_audit
from tests.support.smtp import SmtpSink

DAY = timedelta(days=1)
SPAWN = multiprocessing.get_context("spawn")


def _expire_worker(url: str, as_of: datetime, name: str, start: Any, out: Any) -> None:
    from consentflow import db, sweeps

    engine = db.make_engine(url)
    start.wait(timeout=60)
    done = 0
    for batch in sweeps.drain(
        lambda size, cursor: sweeps.expire_batch(
            sweeps.SweepContext(as_of, run_id=name, engine=engine), size, cursor
        ),
        batch_size=40,
    ):
        done += batch.seen
    engine.dispose()
    out.put((name, done))


def _remind_worker(url: str, port: int, as_of: datetime, name: str, start: Any, out: Any) -> None:
    import os

    os.environ.update(
        CONSENTFLOW_DATABASE_URL=url,
        CONSENTFLOW_SMTP_HOST="127.0.0.1",
        CONSENTFLOW_SMTP_PORT=str(port),
    )
    from consentflow import db, mail, sweeps

    engine = db.make_engine(url)
    start.wait(timeout=60)
    sent = 0
    with mail.Mailer() as mailer:
        for batch in sweeps.drain(
            lambda size, cursor: sweeps.remind_batch(
                sweeps.SweepContext(
                    as_of, run_id=name, engine=engine, mailer=mailer, stages=(1, 7, 30)
                ),
                size,
                cursor,
            ),
            batch_size=15,
        ):
            sent += batch.counts[("news", "sent")]
    engine.dispose()
    out.put((name, sent))


def _run_two(target: Any, *args: Any) -> dict[str, int]:
    start, out = SPAWN.Barrier(2), SPAWN.Queue()
    workers = [SPAWN.Process(target=target, args=(*args, name, start, out)) for name in "AB"]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    return results


def test_two_concurrent_expiry_sweeps_expire_each_consent_once(pg_engine, pg_url) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with db.session_scope(pg_engine) as s:
        for key in ("a", "b", "c"):
            purposes.add(s, key, title=key, validity_days=365)
        systems.add(s, "crm", ["a"], webhook_url="https://crm.example.com/h")
    ids = import_subjects(pg_engine, 300)
    for key in ("a", "b", "c"):  # several consents per subject: batches share subjects
        give(pg_engine, ids, key, [now - (i % 50 + 1) * DAY for i in range(300)])
    url = pg_engine.url.render_as_string(hide_password=False)

    results = _run_two(_expire_worker, url, now)

    assert sum(results.values()) == 900
    with db.session_scope(pg_engine) as s:
        per_consent = s.exec(
            select(ConsentEvent.subject_id, ConsentEvent.purpose_id, func.count())
            .where(ConsentEvent.action == "expire")
            .group_by(ConsentEvent.subject_id, ConsentEvent.purpose_id)
        ).all()
        by_run = dict(
            s.exec(
                select(ConsentEvent.run_id, func.count())
                .where(ConsentEvent.action == "expire")
                .group_by(ConsentEvent.run_id)
            ).all()
        )
    assert len(per_consent) == 900 and {n for *_, n in per_consent} == {1}
    assert by_run == {k: v for k, v in results.items() if v}
    assert count(pg_engine, Delivery) == 300
    verify_audit(pg_engine)


def test_two_concurrent_reminder_runs_email_each_person_once(  # type: ignore[no-untyped-def]
    pg_engine, pg_url, smtp_sink: SmtpSink
) -> None:
    now = utcnow()
    with db.session_scope(pg_engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    ids = import_subjects(pg_engine, 240)
    give(pg_engine, ids, "news", [now + (1 + i % 25) * DAY for i in range(240)])
    url = pg_engine.url.render_as_string(hide_password=False)

    results = _run_two(_remind_worker, url, smtp_sink.port, now)

    assert sum(results.values()) == 240
    recipients = [r.recipients[0] for r in smtp_sink.received]
    assert len(recipients) == 240 and len(set(recipients)) == 240
    assert count(pg_engine, EmailMessage) == 240
    assert count(pg_engine, EmailMessage, EmailMessage.status == "sent") == 240
    verify_audit(pg_engine)


pytestmark = pytest.mark.postgres_only

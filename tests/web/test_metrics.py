"""``GET /metrics`` scraped through the app, on SQLite and PostgreSQL.

Deliveries go to a real receiver on loopback through the delivery engine (time travels through
``now``, nothing sleeps), emails to a real SMTP server through the reminder sweep, runs are
recorded by ``runs.record_run`` as the flows do; the scrape is parsed with
``prometheus_client``'s own parser and every family checked against what was seeded.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlmodel import col, func, select

from consentflow import audit, db, lifecycle, mail, purposes, runs, subjects, sweeps, systems
from consentflow import tokens as cf_tokens
from consentflow.delivery import engine as eng
from consentflow.delivery.schedule import MAX_ATTEMPTS
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, Delivery, utcnow
from tests.support.net import free_port
from tests.support.seeding import give, seed_subjects
from tests.support.smtp import SmtpSink
from tests.support.web import bearer, client
from tests.support.web import seed as seed_tokens
from tests.support.webhooks import Receiver

DAY = timedelta(days=1)
FAST = eng.Options(timeout=5.0)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(token: str) -> Samples:
    """Every sample of one scrape, by (name, sorted labels)."""
    answer = client().get("/metrics", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def endpoints(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    """One family's samples by their label values (in label-name order)."""
    return {tuple(v for _, v in k): n for (n_, k), n in samples.items() if n_ == name}


def _webhooks(engine: Any, receiver: Receiver) -> None:
    """Systems: ok (200), bad (500), gone (410), down (nothing listens), silent (no webhook);
    two withdrawals each, sent in one engine pass."""
    receiver.set("/ok", 200)
    receiver.set("/bad", 500)
    receiver.set("/gone", 410)
    urls = {
        "ok": receiver.url("/ok"),
        "bad": receiver.url("/bad"),
        "gone": receiver.url("/gone"),
        "down": f"http://127.0.0.1:{free_port()}/hook",
    }
    with db.session_scope(engine) as s:
        purposes.add(s, "offers", title="Offers", validity_days=365)
        for name, url in urls.items():
            systems.add(s, name, ["offers"], webhook_url=url)
        systems.add(s, "silent", ["offers"])
        for i in range(3):
            subjects.add(s, f"w{i}")
    with db.session_scope(engine) as s:
        for i in range(3):
            lifecycle.grant(s, f"w{i}", "offers", Actor())
    with db.session_scope(engine) as s:
        for i in range(2):
            lifecycle.revoke(s, f"w{i}", "offers", Actor())


def _emails(engine: Any, sink: SmtpSink) -> None:
    """Renewal reminders: one sent, one deferred (450), one bounced (550)."""
    now = utcnow()
    with db.session_scope(engine) as s:
        purposes.add(s, "letters", title="Letters", validity_days=365)
    ids = seed_subjects(engine, 3, prefix="m")
    give(engine, ids, "letters", now + 5 * DAY)
    sink.script("m1@example.com", "450 4.2.0 greylisted")
    sink.script("m2@example.com", "550 5.1.1 no such user")
    with mail.Mailer() as mailer:

        def step(size: int, cursor: int) -> sweeps.Batch:
            ctx = sweeps.SweepContext(now, mailer=mailer, stages=(1, 7, 30), engine=engine)
            return sweeps.remind_batch(ctx, size, cursor)

        counts: Counter[tuple[str, str]] = Counter()
        for batch in sweeps.drain(step, batch_size=10):
            counts.update(batch.counts)
    assert counts == {("letters", "sent"): 1, ("letters", "deferred"): 1, ("letters", "bounced"): 1}


def _record_run(engine: Any, flow: str, seconds: float, outcome: str, dry: bool = False) -> None:
    started = utcnow() - timedelta(seconds=seconds)
    summary = runs.RunSummary(flow, {}, dry_run=dry, started_at=started)
    with db.session_scope(engine) as s:
        runs.record_run(s, summary, outcome)


@pytest.mark.usefixtures("allow_loopback")
def test_a_scrape_reports_what_the_tables_hold(engine, receiver, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    tokens = seed_tokens(engine)  # crm (a webhook, nothing sent) and billing (none)
    _webhooks(engine, receiver)
    started = utcnow()
    eng.deliver_due(engine, options=FAST)
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "w2", "offers", Actor())  # one more each, not tried yet
    _emails(engine, smtp_sink)
    _record_run(engine, "expiry-sweep", 90, "completed")
    _record_run(engine, "expiry-sweep", 2, "completed")
    _record_run(engine, "propagate", 400, "failed")
    _record_run(engine, "propagate", 1, "completed", dry=True)  # dry runs are not counted

    m = scrape(tokens.compliance)
    elapsed = (utcnow() - started).total_seconds()

    # Attempts by outcome, zeros included for every endpoint; none for a system without webhook.
    assert {k: v for k, v in endpoints(m, "consentflow_deliveries_total").items() if v} == {
        ("ok", "delivered"): 2,
        ("bad", "failed"): 2,
        ("gone", "failed"): 2,
        ("down", "error"): 2,
    }
    assert {e for e, _ in endpoints(m, "consentflow_deliveries_total")} == {
        "crm", "ok", "bad", "gone", "down"
    }  # fmt: skip
    # The queue: bad and down retry, gone is disabled (held); the last withdrawal is new.
    assert {k: v for k, v in endpoints(m, "consentflow_outbox_queue_depth").items() if v} == {
        ("bad", "pending"): 1,
        ("bad", "retrying"): 2,
        ("down", "pending"): 1,
        ("down", "retrying"): 2,
        ("gone", "held"): 3,
        ("ok", "pending"): 1,
    }
    ages = endpoints(m, "consentflow_outbox_oldest_undelivered_seconds")
    assert ages[("crm",)] == 0
    for name in ("ok", "bad", "gone", "down"):
        assert 0 < ages[(name,)] <= elapsed + 1  # created before `started`, at most a second
    assert set(endpoints(m, "consentflow_outbox_dead_letters").values()) == {0}

    # Emails: each recorded outcome, nothing left claimed.
    assert endpoints(m, "consentflow_emails_total") == {
        ("renewal_reminder", "sent"): 1,
        ("renewal_reminder", "deferred"): 1,
        ("renewal_reminder", "bounced"): 1,
        ("renewal_reminder", "failed"): 0,
    }
    assert endpoints(m, "consentflow_emails_claimed") == {("renewal_reminder",): 0}

    # Runs: a cumulative histogram per flow and outcome.
    sweep = {"flow": "expiry-sweep", "outcome": "completed"}
    assert value(m, "consentflow_flow_run_duration_seconds_count", **sweep) == 2
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="1.0", **sweep) == 0
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="5.0", **sweep) == 1
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="60.0", **sweep) == 1
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="300.0", **sweep) == 2
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="+Inf", **sweep) == 2
    total = value(m, "consentflow_flow_run_duration_seconds_sum", **sweep)
    assert 92 - 0.01 <= total <= 92 + elapsed + 0.01  # millisecond precision on SQLite
    failed = {"flow": "propagate", "outcome": "failed"}
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="300.0", **failed) == 0
    assert value(m, "consentflow_flow_run_duration_seconds_bucket", le="600.0", **failed) == 1
    assert ("propagate", "completed") not in endpoints(
        m, "consentflow_flow_run_last_finished_timestamp_seconds"
    )
    last = value(m, "consentflow_flow_run_last_finished_timestamp_seconds", **sweep)
    assert started.timestamp() - 1 <= last <= utcnow().timestamp()

    with db.session_scope(engine) as s:
        head = s.exec(select(func.max(col(AuditEntry.seq)))).one()
    assert value(m, "consentflow_audit_head_seq") == head


@pytest.mark.usefixtures("allow_loopback")
def test_dead_letters_count_until_replayed_and_stay_counted(engine, receiver) -> None:  # type: ignore[no-untyped-def]
    tokens = seed_tokens(engine)
    receiver.set("/bad", 500)
    with db.session_scope(engine) as s:
        purposes.add(s, "offers", title="Offers", validity_days=365)
        systems.add(s, "bad", ["offers"], webhook_url=receiver.url("/bad"))
        subjects.add(s, "w0")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "w0", "offers", Actor())
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, "w0", "offers", Actor())
    now = utcnow()
    for _ in range(MAX_ATTEMPTS):  # each pass at the next due time: the schedule runs out
        eng.deliver_due(engine, options=FAST, now=now)
        with db.session_scope(engine) as s:
            delivery = s.exec(select(Delivery)).one()
        now = max(now, delivery.next_attempt_at)
    assert delivery.state == "dead"

    m = scrape(tokens.admin)
    assert value(m, "consentflow_deliveries_total", endpoint="bad", outcome="failed") == (
        MAX_ATTEMPTS
    )
    assert value(m, "consentflow_dead_letters_total", endpoint="bad") == 1
    assert value(m, "consentflow_outbox_dead_letters", endpoint="bad") == 1
    assert value(m, "consentflow_outbox_oldest_undelivered_seconds", endpoint="bad") > 0

    from consentflow.delivery import ops

    with db.session_scope(engine) as s:
        ops.replay(s, delivery.id)
    m = scrape(tokens.admin)
    assert value(m, "consentflow_outbox_dead_letters", endpoint="bad") == 0
    assert value(m, "consentflow_outbox_queue_depth", endpoint="bad", state="pending") == 1
    assert value(m, "consentflow_dead_letters_total", endpoint="bad") == 1  # a counter


def test_an_empty_database_scrapes(engine) -> None:  # type: ignore[no-untyped-def]
    tokens = seed_tokens(engine)
    m = scrape(tokens.compliance)
    assert value(m, "consentflow_deliveries_total", endpoint="crm", outcome="delivered") == 0
    assert value(m, "consentflow_outbox_oldest_undelivered_seconds", endpoint="crm") == 0
    assert endpoints(m, "consentflow_emails_total") == {}
    assert endpoints(m, "consentflow_flow_run_duration_seconds_count") == {}


@pytest.mark.parametrize(
    ("scope", "status"),
    [
        (None, 401),
        ("support", 403),
        ("system", 403),
        ("metrics", 200),
        ("compliance", 200),
        ("admin", 200),
    ],
)
def test_metrics_need_a_metrics_compliance_or_admin_token(  # type: ignore[no-untyped-def]
    engine, scope: str | None, status: int
) -> None:
    tokens = seed_tokens(engine)
    with db.session_scope(engine) as s:
        scraper = cf_tokens.create(s, "prometheus", "metrics")[1]
    token = scraper if scope == "metrics" else tokens.by_scope(scope) if scope else None
    headers = bearer(token) if token else {}
    answer = client().get("/metrics", headers=headers)
    assert answer.status_code == status
    if status == 200:
        assert answer.text.startswith("# HELP consentflow_")


def test_the_openapi_schema_lists_metrics_as_text(engine) -> None:  # type: ignore[no-untyped-def]
    schema = client().get("/openapi.json").json()
    get = schema["paths"]["/metrics"]["get"]
    assert list(get["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]
    assert {"401", "403"} <= set(get["responses"])
    assert get["security"] == [{"HTTPBearer": []}]


def test_counters_fold_what_is_new_and_start_over_on_another_history(engine) -> None:  # type: ignore[no-untyped-def]
    """Each scrape adds what was committed since the last; a history that is not the one the
    totals were folded from (restored, truncated, another database under the same URL) is
    folded again from nothing, never added to the old counts."""
    tokens = seed_tokens(engine)
    run = {"flow": "expiry-sweep", "outcome": "completed"}
    _record_run(engine, "expiry-sweep", 3, "completed")
    assert value(scrape(tokens.admin), "consentflow_flow_run_duration_seconds_count", **run) == 1
    _record_run(engine, "expiry-sweep", 3, "completed")
    m = scrape(tokens.admin)
    assert value(m, "consentflow_flow_run_duration_seconds_count", **run) == 2
    folded = int(value(m, "consentflow_audit_head_seq"))

    # Another history, longer than the one folded: the entry at the old head has another hash.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entry"))
        conn.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": audit.GENESIS})
    for _ in range(folded + 2):
        _record_run(engine, "expiry-sweep", 3, "completed")
    m = scrape(tokens.admin)
    assert value(m, "consentflow_flow_run_duration_seconds_count", **run) == folded + 2
    # And a shorter one (its head below the old one).
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entry"))
        conn.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": audit.GENESIS})
    _record_run(engine, "propagate", 3, "completed")
    m = scrape(tokens.admin)
    assert endpoints(m, "consentflow_flow_run_duration_seconds_count") == {
        ("propagate", "completed"): 1
    }


def _email_row(conn: Any, subject_id: int, status: str) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO email_message (message_id, subject_id, kind, status, created_at) "
                "VALUES (:m, :s, 'renewal_reminder', :st, :at) RETURNING id"
            ),
            {"m": f"<{uuid.uuid4().hex}@test>", "s": subject_id, "st": status, "at": utcnow()},
        ).scalar_one()
    )


def test_a_claimed_email_counts_once_its_outcome_is_recorded(engine) -> None:  # type: ignore[no-untyped-def]
    tokens = seed_tokens(engine)
    (subject,) = seed_subjects(engine, 1, prefix="c")
    with engine.begin() as conn:
        claimed = _email_row(conn, subject, "claimed")
    m = scrape(tokens.admin)
    assert endpoints(m, "consentflow_emails_claimed") == {("renewal_reminder",): 1}
    assert value(m, "consentflow_emails_total", kind="renewal_reminder", outcome="sent") == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE email_message SET status = 'sent' WHERE id = :i"), {"i": claimed})
    m = scrape(tokens.admin)
    assert endpoints(m, "consentflow_emails_claimed") == {("renewal_reminder",): 0}
    assert value(m, "consentflow_emails_total", kind="renewal_reminder", outcome="sent") == 1
    assert value(scrape(tokens.admin), "consentflow_emails_total", kind="renewal_reminder",
                 outcome="sent") == 1  # fmt: skip


def test_a_row_committed_after_a_later_id_is_counted_when_it_appears(pg_engine) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL hands out ids before commit: an id below the highest one counted that is not
    visible yet is looked up again on the next scrapes, and counted once it commits."""
    tokens = seed_tokens(pg_engine)
    (subject,) = seed_subjects(pg_engine, 1, prefix="g")
    sent = {"kind": "renewal_reminder", "outcome": "sent"}
    with pg_engine.connect() as slow:
        with slow.begin():
            early = _email_row(slow, subject, "sent")  # open: not visible to a scrape
            with pg_engine.begin() as conn:
                late = _email_row(conn, subject, "sent")
            assert early < late
            assert value(scrape(tokens.admin), "consentflow_emails_total", **sent) == 1
        assert value(scrape(tokens.admin), "consentflow_emails_total", **sent) == 2
    assert value(scrape(tokens.admin), "consentflow_emails_total", **sent) == 2

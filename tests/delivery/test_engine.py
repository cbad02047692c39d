"""The delivery engine against real HTTP receivers on loopback, on SQLite and PostgreSQL.

Time is simulated through ``now``; nothing sleeps to wait for something else.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, func, select

from consentflow import audit, db, lifecycle, models, settings, systems
from consentflow.delivery import alerts, ops, secretbox, signing
from consentflow.delivery import engine as eng
from consentflow.lifecycle import Actor
from consentflow.models import AuditEntry, Delivery, DeliveryAttempt, System, utcnow
from tests.support.webhooks import ledger, revoke, verify

FAST = eng.Options(timeout=5.0)


pytestmark = pytest.mark.usefixtures("allow_loopback")


def deliveries(engine) -> list[Delivery]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(Delivery).order_by(col(Delivery.id))).all())


def attempts_of(engine, delivery_id: int) -> list[DeliveryAttempt]:
    with db.session_scope(engine) as s:
        return list(
            s.exec(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id == delivery_id)
                .order_by(col(DeliveryAttempt.id))
            ).all()
        )


def system(engine, name: str) -> System:
    with db.session_scope(engine) as s:
        return s.exec(select(System).where(System.name == name)).one()


def drain_simulated(engine, *, start, until=None, step_hook=None, options=FAST, max_runs=200):
    """Run the worker at ``start``, then at each next due time, until nothing is pending."""
    now = start
    for _ in range(max_runs):
        if step_hook:
            step_hook(now)
        eng.deliver_due(engine, options=options, now=now)
        with db.session_scope(engine) as s:
            nxt = s.exec(
                select(func.min(Delivery.next_attempt_at)).where(Delivery.state == "pending")
            ).one()
        if nxt is None:
            return now
        now = max(now, _aware(nxt))
        if until is not None and now > until:
            return now
    raise AssertionError("deliveries still pending after max_runs")


def _aware(value):
    """MIN() bypasses the column type on SQLite: a naive string comes back."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# ------------------------------------------------------------------------- status codes


CASES = {
    "200": dict(status=200, body=b"thanks"),
    "204": dict(status=204),
    "301": dict(status=301, headers={"location": "/elsewhere"}),
    "404": dict(status=404, body=b"no such hook"),
    "410": dict(status=410),
    "429": dict(status=429, headers={"retry-after": "120"}),
    "500": dict(status=500, body=b"boom"),
    "timeout": dict(status=200, hang=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_status_outcome(engine, receiver, case):
    secret = ledger(engine, receiver, {"crm": "/hook"})["crm"]
    receiver.set("/hook", **CASES[case])
    revoke(engine)
    now = utcnow()
    options = eng.Options(timeout=0.5 if case == "timeout" else 5.0)
    report = eng.deliver_due(engine, options=options, now=now)

    [d] = deliveries(engine)
    [a] = attempts_of(engine, d.id)
    [req] = receiver.at("/hook")
    verify(req, secret)
    assert req.body == d.payload.encode()
    assert req.headers["webhook-id"] == d.webhook_id
    assert receiver.at("/elsewhere") == []  # redirects are not followed
    assert a.attempt == 1 and d.attempts == 1
    assert d.leased_until is None
    wait = (d.next_attempt_at - now).total_seconds()
    if case in ("200", "204"):
        assert d.state == "delivered" and d.delivered_at is not None
        assert a.status_code == int(case)
        assert report.total(eng.DELIVERED) == 1
        assert system(engine, "crm").last_success_at is not None
        if case == "200":
            assert a.response_excerpt == "thanks"
    elif case == "410":
        assert d.state == "pending"  # held, never dropped
        s = system(engine, "crm")
        assert s.status == "disabled" and "410" in (s.status_reason or "")
        assert report.total(eng.DISABLED) == 1 and report.total(eng.HELD) == 1
        # held: a later run does not send it
        eng.deliver_due(engine, options=options, now=now + timedelta(days=1))
        assert len(receiver.at("/hook")) == 1
    else:
        assert d.state == "pending" and report.total(eng.RETRIED) == 1
        if case == "timeout":
            assert a.status_code is None and a.error_class == "Timeout"
            assert wait >= 0.8 * 60  # slow down: at least a minute
        elif case == "429":
            assert a.status_code == 429 and wait >= 120  # Retry-After honoured
        else:
            assert a.status_code == int(case)
            assert 0.8 * 5 <= wait <= 1.2 * 5  # the schedule: 5 s after the first failure
        if case == "301":
            assert "redirect" in (d.last_error or "")
        if case == "500":
            assert a.response_excerpt == "boom"


def test_payload_has_no_personal_data_and_the_agreed_shape(engine, receiver):
    secret = ledger(engine, receiver, {"crm": "/hook"})["crm"]
    revoke(engine)
    eng.deliver_due(engine, options=FAST)
    body = verify(receiver.at("/hook")[0], secret)
    assert body["type"] == "consent.withdrawn"
    data = body["data"]
    assert data["subject"] == "subject-0" and data["purpose"] == "news"
    assert data["state"] == "withdrawn" and data["sequence"] == 2
    assert {"purpose_version", "effective_at", "event_id"} <= set(data)
    assert "email" not in receiver.at("/hook")[0].body.decode()


# -------------------------------------------------------------- retries, replay, outages


def test_same_webhook_id_across_retries_and_replay(engine, receiver):
    secret = ledger(engine, receiver, {"crm": "/hook"})["crm"]
    receiver.set("/hook", status=503)
    revoke(engine)
    t = utcnow()
    eng.deliver_due(engine, options=FAST, now=t)
    eng.deliver_due(engine, options=FAST, now=t + timedelta(hours=1))
    receiver.set("/hook", status=200)
    eng.deliver_due(engine, options=FAST, now=t + timedelta(hours=2))
    [d] = deliveries(engine)
    assert d.state == "delivered" and d.attempts == 3
    first_delivered = d.delivered_at
    with db.session_scope(engine) as s:
        ops.replay(s, d.id, actor="test", now=t + timedelta(hours=3))
    eng.deliver_due(engine, options=FAST, now=t + timedelta(hours=3))
    reqs = receiver.at("/hook")
    assert len(reqs) == 4
    assert {r.headers["webhook-id"] for r in reqs} == {d.webhook_id}
    assert {r.body for r in reqs} == {d.payload.encode()}
    for r in reqs:
        verify(r, secret)
    [d] = deliveries(engine)
    assert d.state == "delivered" and d.delivered_at == first_delivered  # when it first learnt
    assert [a.status_code for a in attempts_of(engine, d.id)] == [503, 503, 200, 200]


def test_receiver_down_for_days_then_back_gets_everything(engine, receiver):
    secrets = ledger(engine, receiver, {"crm": "/down", "ads": "/up"}, subjects_n=5)
    receiver.set("/down", status=503)
    revoke(engine, 5)
    start = utcnow()
    back_at = start + timedelta(days=2, hours=12)

    def hook(now):
        if now >= back_at:
            receiver.set("/down", status=200)

    drain_simulated(engine, start=start, step_hook=hook)
    rows = deliveries(engine)
    assert len(rows) == 10 and {d.state for d in rows} == {"delivered"}
    down = [d for d in rows if d.system_id == system(engine, "crm").id]
    assert all(d.delivered_at >= back_at for d in down)
    assert all(d.attempts >= 7 for d in down)
    counts = receiver.ids("/down")
    assert set(counts) == {d.webhook_id for d in down}
    for r in receiver.at("/down"):
        verify(r, secrets["crm"])
    assert len(receiver.at("/up")) == 5  # the healthy endpoint was never held up


def test_exhausted_schedule_dead_letters_alerts_and_redeliver(
    engine, receiver, smtp_sink, monkeypatch
):
    monkeypatch.setenv("CONSENTFLOW_COMPLIANCE_EMAIL", "compliance@example.org")
    settings.get_settings.cache_clear()
    ledger(engine, receiver, {"crm": "/hook"})
    receiver.set("/hook", status=500)
    revoke(engine)
    start = utcnow()
    drain_simulated(engine, start=start)
    [d] = deliveries(engine)
    assert d.state == "dead" and d.attempts == 10
    assert len(attempts_of(engine, d.id)) == 10
    # one alert, from the run that dead-lettered it, naming the delivery (never the person)
    [mail] = smtp_sink.to("compliance@example.org")
    assert mail.message["subject"] == ("consentflow: 1 webhook deliveries dead-lettered (crm)")
    body = mail.part("plain")
    assert f"crm: delivery {d.id} ({d.webhook_id}): HTTP 500" in body
    assert "subject-0" not in body
    with db.session_scope(engine) as s:
        entry = s.exec(
            select(AuditEntry)
            .where(AuditEntry.action == "delivery.dead_lettered")
            .order_by(col(AuditEntry.seq))
        ).one()
        assert entry.detail["webhook_id"] == d.webhook_id and "500" in entry.detail["last_error"]
        assert audit.verify(s).ok
    # an operator fixes the endpoint and redelivers everything that failed since the outage
    receiver.set("/hook", status=200)
    with db.session_scope(engine) as s:
        assert ops.redeliver_since(s, start, actor="test", now=start + timedelta(days=5)) == 1
    eng.deliver_due(engine, options=FAST, now=start + timedelta(days=5))
    [d] = deliveries(engine)
    assert d.state == "delivered"
    assert len(receiver.ids("/hook")) == 1  # one webhook-id throughout


def test_dead_letter_alert_emails_compliance(engine, receiver, smtp_sink, monkeypatch):
    monkeypatch.setenv("CONSENTFLOW_COMPLIANCE_EMAIL", "compliance@example.org")
    settings.get_settings.cache_clear()
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)
    receiver.set("/hook", status=500)
    revoke(engine, 2)
    drain_simulated(engine, start=utcnow())
    mails = smtp_sink.to("compliance@example.org")  # one alert per run that dead-lettered
    assert mails and all("dead-lettered (crm)" in m.message["subject"] for m in mails)
    text = "".join(m.part("plain") for m in mails)
    for d in deliveries(engine):
        assert d.state == "dead" and d.webhook_id in text
    assert "subject-" not in text  # systems and ids only, never people


def test_alert_is_logged_without_a_compliance_address(caplog):
    dead = [{"system": "crm", "webhook_id": "msg_x", "id": 7, "error": "HTTP 500"}]
    assert alerts.dead_lettered(dead, run_id="r1") is False
    assert "msg_x" in caplog.text and "dead-lettered" in caplog.text


# ------------------------------------------------------------------ crashes and leases


def test_worker_killed_after_claiming_nothing_lost(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)
    revoke(engine, 3)
    now = utcnow()
    lease = timedelta(minutes=5)
    with db.session_scope(engine) as s:  # a worker claims, then dies before sending
        claimed = eng.claim(s, system(engine, "crm").id, now=now, limit=10, lease=lease)
    assert len(claimed) == 3
    # while the lease lives, nobody else sends them
    report = eng.deliver_due(engine, options=FAST, now=now + timedelta(minutes=1))
    assert report.total() == 0 and receiver.requests == []
    # after the lease, the next worker takes them over
    eng.deliver_due(engine, options=FAST, now=now + lease + timedelta(seconds=1))
    assert {d.state for d in deliveries(engine)} == {"delivered"}
    assert sorted(receiver.ids("/hook").values()) == [1, 1, 1]


def test_a_worker_that_lost_its_lease_cannot_overwrite(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"})
    revoke(engine)
    now = utcnow()
    sid = system(engine, "crm").id
    with db.session_scope(engine) as s:
        [late] = eng.claim(s, sid, now=now, limit=1, lease=timedelta(seconds=30))
    # the lease runs out; a second worker delivers
    eng.deliver_due(engine, options=FAST, now=now + timedelta(minutes=1))
    # the first worker comes back with a failure: it must not undo the delivery
    failure = eng.Result(late, now, now, 5, status=500)
    with db.session_scope(engine) as s:
        assert eng.record(s, [failure]) == [eng.SUPERSEDED]
    [d] = deliveries(engine)
    assert d.state == "delivered" and d.attempts == 1
    assert len(attempts_of(engine, d.id)) == 2  # both attempts are on record


# ------------------------------------------------------------------ fairness and holds


def test_slow_endpoint_does_not_hold_up_a_fast_one(engine, receiver):
    ledger(engine, receiver, {"slow": "/slow", "fast": "/fast"}, subjects_n=8)
    fast_done = threading.Event()
    seen_while_slow_in_flight = []
    receiver.set(
        "/slow",
        status=200,
        hook=lambda cap: seen_while_slow_in_flight.append(fast_done.wait(20)),
    )
    revoke(engine, 8)
    delivered_fast = []

    def on_result(name, outcome):
        if name == "fast" and outcome == eng.DELIVERED:
            delivered_fast.append(outcome)
            if len(delivered_fast) == 8:
                fast_done.set()

    options = eng.Options(timeout=30.0, per_endpoint=2, batch_size=4)
    eng.deliver_due(engine, options=options, on_result=on_result)
    # every slow request was answered only after all the fast ones had been recorded
    assert seen_while_slow_in_flight and all(seen_while_slow_in_flight)
    assert {d.state for d in deliveries(engine)} == {"delivered"}


def test_paused_system_holds_and_resume_delivers(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)
    with db.session_scope(engine) as s:
        ops.set_status(s, "crm", "pause", actor="test")
    revoke(engine, 2)
    report = eng.deliver_due(engine, options=FAST, now=utcnow() + timedelta(days=10))
    assert report.total(eng.HELD) == 2 and receiver.requests == []
    with db.session_scope(engine) as s:
        held, _more = ops.deliveries_page(s, state="held")
        assert {v.held for v in held} == {True}
        _, pending = ops.set_status(s, "crm", "resume", actor="test")
        assert pending == 2
    eng.deliver_due(engine, options=FAST)
    assert {d.state for d in deliveries(engine)} == {"delivered"}


def test_disabled_by_410_enable_delivers_the_held_rows(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)
    receiver.set("/hook", status=410)
    revoke(engine, 3)
    eng.deliver_due(engine, options=eng.Options(timeout=5.0, per_endpoint=1, batch_size=1))
    assert system(engine, "crm").status == "disabled"
    assert len(receiver.requests) == 1  # the first 410 stopped the lane
    receiver.set("/hook", status=200)
    with db.session_scope(engine) as s:
        ops.set_status(s, "crm", "enable", actor="test")
    eng.deliver_due(engine, options=FAST)
    assert {d.state for d in deliveries(engine)} == {"delivered"}


def test_410_mid_batch_sends_no_more_and_gives_back_the_leases(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=5)
    receiver.set("/hook", status=410)
    revoke(engine, 5)
    now = utcnow()
    report = eng.deliver_due(
        engine, options=eng.Options(timeout=5.0, per_endpoint=1, batch_size=5), now=now
    )
    assert len(receiver.requests) == 1 and report.by_system() == {
        "crm": {eng.DISABLED: 1, eng.HELD: 5}
    }
    assert report.failing_systems() == ["crm"] and report.attempted() == 1
    assert {d.leased_until for d in deliveries(engine)} == {None}  # held, not leased
    receiver.set("/hook", status=200)
    with db.session_scope(engine) as s:
        ops.set_status(s, "crm", "enable", actor="test")
    eng.deliver_due(engine, options=FAST, now=now)  # at once: no lease to wait out
    assert {d.state for d in deliveries(engine)} == {"delivered"}


def test_rolled_back_revocation_produces_no_delivery(engine, receiver):
    ledger(engine, receiver, {"crm": "/hook"})
    with pytest.raises(RuntimeError), db.session_scope(engine) as s:
        lifecycle.revoke(s, "subject-0", "news", Actor())
        raise RuntimeError("crash before commit")
    assert deliveries(engine) == []
    report = eng.deliver_due(engine, options=FAST, now=utcnow() + timedelta(days=1))
    assert report.total() == 0 and receiver.requests == []


# --------------------------------------------------------------- secrets and SSRF at send


def test_secret_rotation_sends_two_signatures_both_verifying(engine, receiver):
    old = ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)["crm"]
    now = utcnow()
    with db.session_scope(engine) as s:
        new = ops.rotate_secret(s, "crm", grace=timedelta(hours=24), actor="test", now=now)
    revoke(engine, 1)
    eng.deliver_due(engine, options=FAST)
    [req] = receiver.at("/hook")
    sigs = req.headers["webhook-signature"].split(" ")
    assert len(sigs) == 2
    body, wid, ts = req.body, req.headers["webhook-id"], int(req.headers["webhook-timestamp"])
    assert sigs == [signing.sign(new, wid, ts, body), signing.sign(old, wid, ts, body)]
    verify(req, new)
    verify(req, old)
    # after the grace period only the new secret signs
    revoke(engine, 1, start=1)
    eng.deliver_due(engine, options=FAST, now=now + timedelta(hours=25))
    last = receiver.at("/hook")[-1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    verify(last, new)
    with pytest.raises(Exception, match="signature"):
        verify(last, old)


def use_secret_key(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CONSENTFLOW_SECRET_KEY", value)
    settings.get_settings.cache_clear()


def dump(engine) -> str:
    """Every row of every table as text: what a database dump would show."""
    with db.session_scope(engine) as s:
        return "\n".join(
            repr(tuple(row)) for t in models.metadata.sorted_tables for row in s.execute(t.select())
        )


def test_secrets_are_stored_encrypted_and_a_dump_does_not_reveal_them(
    engine, receiver, monkeypatch
):
    use_secret_key(monkeypatch, "kept-outside-the-database")
    old = ledger(engine, receiver, {"crm": "/hook"})["crm"]
    with db.session_scope(engine) as s:
        new = ops.rotate_secret(s, "crm", grace=timedelta(hours=1), actor="test")
    row = system(engine, "crm")
    for stored in (row.webhook_secret, row.previous_secret):
        assert stored.startswith(secretbox.PREFIX) and len(stored) <= 200  # fits the column
    with db.session_scope(engine) as s:
        assert secretbox.open_secret(s, row.webhook_secret) == new
        assert secretbox.open_secret(s, row.previous_secret) == old
    text = dump(engine)
    for secret in (old, new):
        assert secret not in text and secret.removeprefix("whsec_") not in text
    # signing decrypts them: both signatures verify during the grace period
    revoke(engine)
    eng.deliver_due(engine, options=FAST)
    [req] = receiver.at("/hook")
    verify(req, new)
    verify(req, old)


def test_a_secret_stored_in_plain_text_is_still_used_and_rotation_encrypts_it(engine, receiver):
    plain = systems.new_secret()
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)
    with db.session_scope(engine) as s:  # as written before secrets were encrypted
        s.execute(update(System).where(col(System.name) == "crm").values(webhook_secret=plain))
    revoke(engine, 1)
    eng.deliver_due(engine, options=FAST)
    verify(receiver.at("/hook")[0], plain)
    with db.session_scope(engine) as s:
        new = ops.rotate_secret(s, "crm", grace=timedelta(hours=1), actor="test")
    row = system(engine, "crm")
    assert row.previous_secret.startswith(secretbox.PREFIX) and plain not in dump(engine)
    revoke(engine, 1, start=1)
    eng.deliver_due(engine, options=FAST)
    verify(receiver.at("/hook")[1], new)
    verify(receiver.at("/hook")[1], plain)


def test_an_unreadable_secret_fails_as_misconfigured_until_rotated(engine, receiver, monkeypatch):
    use_secret_key(monkeypatch, "the-first-key")
    ledger(engine, receiver, {"crm": "/hook"})
    revoke(engine)
    use_secret_key(monkeypatch, "a-different-key")  # the key changed: stored secrets unreadable
    now = utcnow()
    eng.deliver_due(engine, options=FAST, now=now)
    [d] = deliveries(engine)
    [a] = attempts_of(engine, d.id)
    assert receiver.requests == [] and d.state == "pending"
    assert a.error_class == "Misconfigured" and "rotate" in (d.last_error or "")
    # rotating gives a secret readable with the current key; the unreadable old one cannot sign
    with db.session_scope(engine) as s:
        new = ops.rotate_secret(s, "crm", grace=timedelta(hours=24), actor="test", now=now)
    eng.deliver_due(engine, options=FAST, now=now + timedelta(minutes=5))
    [req] = receiver.at("/hook")
    assert len(req.headers["webhook-signature"].split()) == 1
    verify(req, new)
    assert deliveries(engine)[0].state == "delivered"


def test_attempt_log_lines_name_no_secret_and_no_person(engine, receiver, caplog):
    secret = ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)["crm"]
    receiver.set("/hook", status=503)
    revoke(engine, 2)
    with caplog.at_level(logging.INFO, logger="consentflow.delivery"):
        eng.deliver_due(engine, options=FAST)
    lines = [r for r in caplog.records if r.name == "consentflow.delivery"]
    assert len(lines) == 2 and {r.levelno for r in lines} == {logging.WARNING}
    assert all("attempt 1: HTTP 503" in r.getMessage() for r in lines)
    assert {d.webhook_id for d in deliveries(engine)} <= set(caplog.text.split())
    assert secret.removeprefix("whsec_") not in caplog.text and "subject-" not in caplog.text


def test_ssrf_checked_again_at_send(engine, receiver, monkeypatch):
    ledger(engine, receiver, {"crm": "/hook"})
    revoke(engine)
    monkeypatch.setenv("CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS", "")
    settings.get_settings.cache_clear()
    eng.deliver_due(engine, options=FAST)
    [d] = deliveries(engine)
    [a] = attempts_of(engine, d.id)
    assert d.state == "pending" and a.error_class == "SSRFRefused"
    assert receiver.requests == []


def test_name_not_resolving_is_accepted_then_fails_at_send(engine, receiver):
    from consentflow import purposes, subjects, systems

    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
        systems.add(s, "later", ["news"], webhook_url="https://hooks.not-yet.invalid/x")
        subjects.add(s, "subject-0")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "subject-0", "news", Actor())
    revoke(engine)
    eng.deliver_due(engine, options=FAST)
    [d] = deliveries(engine)
    [a] = attempts_of(engine, d.id)
    assert d.state == "pending" and a.error_class == "ConnectError"
    assert "resolve" in (d.last_error or "")

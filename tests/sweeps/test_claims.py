"""The email claim protocol under faults, on both databases, over a real SMTP server (issue 14):
each outcome is recorded as soon as the server answers it, so a SIGKILL leaves unrecorded only
the message in flight, and a cancel (KeyboardInterrupt) records every answer already received.

The server is ``GatedSmtp``: with two pooled connections, one message (A) is accepted while the
other (B) is held at DATA. The fault strikes only once A's outcome is committed; a run that
records outcomes only at the end of its batch never gets there (and these tests fail).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from consentflow import db, mail, purposes, sweeps
from consentflow.models import Consent, EmailMessage, utcnow
from tests.support.faults import GatedSmtp
from tests.support.seeding import audit_entries, give, seed_subjects, verify_audit
from tests.support.signals import ctrl_c
from tests.support.smtp import use_smtp
from tests.support.workers import eventually, kill_tree

STAGES = (1, 7, 30)
DAY = timedelta(days=1)

#: A reminder batch in a process of its own (the settings come from the environment).
RUNNER = """
import sys
from datetime import datetime
from consentflow import mail, sweeps
as_of = datetime.fromisoformat(sys.argv[1])
with mail.Mailer() as m:
    ctx = sweeps.SweepContext(as_of, run_id="killed", mailer=m, stages=(1, 7, 30))
    sweeps.remind_batch(ctx, 10, 0)
"""


@pytest.fixture
def gated(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedSmtp]:
    """A gated SMTP server (armed), two pooled connections, and two people due a reminder."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly news", validity_days=365)
    give(engine, seed_subjects(engine, 2), "news", utcnow() + 5 * DAY)
    smtp = GatedSmtp().start()
    use_smtp(monkeypatch, smtp.port)
    monkeypatch.setenv("CONSENTFLOW_SMTP_POOL_SIZE", "2")
    # B is never timed out while held: only the fault (or the gate's release) ends its wait
    monkeypatch.setenv("CONSENTFLOW_SMTP_TIMEOUT", "90")
    smtp.gate.arm()
    try:
        yield smtp
    finally:
        smtp.gate.release()
        smtp.stop()


def _messages(engine: Engine) -> list[EmailMessage]:
    with db.session_scope(engine) as s:
        return list(s.exec(select(EmailMessage).order_by(col(EmailMessage.id))).all())


def _one_accepted_and_recorded(engine: Engine, smtp: GatedSmtp) -> bool:
    """B is held at DATA, A was accepted, and A's outcome is committed."""
    return (
        smtp.gate.in_flight.is_set()
        and len(smtp.received) == 1
        and [m.status for m in _messages(engine)].count("sent") == 1
    )


def _accepted(smtp: GatedSmtp) -> Counter[str]:
    return Counter(r for received in smtp.received for r in received.recipients)


def _remind(engine: Engine, as_of: datetime) -> sweeps.Counts:
    with mail.Mailer() as m:
        ctx = sweeps.SweepContext(as_of, mailer=m, stages=STAGES, engine=engine)
        return sweeps.remind_batch(ctx, 10, 0).counts


def test_a_kill_leaves_only_the_message_in_flight_unrecorded(
    engine: Engine, gated: GatedSmtp, tmp_path: Path
) -> None:
    now = utcnow()
    with (tmp_path / "run.out").open("wb") as out, (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, now.isoformat()],
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        eventually(
            lambda: _one_accepted_and_recorded(engine, gated),
            30,
            "A accepted and recorded sent while B is held",
            lambda: (
                f"statuses {[m.status for m in _messages(engine)]}; "
                f"stderr: {(tmp_path / 'run.err').read_text()[-2000:]}"
            ),
        )
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        gated.gate.release()  # B: the server answers 421 to a client that is gone
    a, b = sorted(_messages(engine), key=lambda m: m.status != "sent")
    assert (a.status, b.status) == ("sent", "claimed")
    assert a.sent_at is not None and a.run_id == b.run_id == "killed"
    assert [e.detail["message_id"] for e in audit_entries(engine, "email.sent")] == [a.message_id]
    # Within the lease a rerun sends nothing; after it, only B is released and sent again.
    assert _remind(engine, now) == {}
    released = sweeps.release_stale_claims(
        sweeps.SweepContext(now, run_id="next", engine=engine),
        [mail.Kind.RENEWAL_REMINDER],
        lease=timedelta(0),
    )
    assert released.counts == {("news", "claims_released"): 1}
    assert _remind(engine, now) == {("news", "sent"): 1}
    assert _accepted(gated) == {"p0@example.com": 1, "p1@example.com": 1}
    by_subject = Counter((m.subject_id, m.status) for m in _messages(engine))
    assert by_subject[(a.subject_id, "sent")] == 1 and by_subject[(b.subject_id, "sent")] == 1
    verify_audit(engine)


def test_a_cancel_records_every_answer_already_received(engine: Engine, gated: GatedSmtp) -> None:
    now = utcnow()
    problems: list[BaseException] = []

    def interrupt_when_a_is_recorded() -> None:
        try:
            eventually(
                lambda: _one_accepted_and_recorded(engine, gated),
                30,
                "A accepted and recorded sent while B is held",
            )
            signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the test
        except BaseException as exc:
            problems.append(exc)
            gated.gate.release()

    with ctrl_c() as main:
        striker = threading.Thread(target=interrupt_when_a_is_recorded)
        striker.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                _remind(engine, now)
        finally:
            striker.join(60)
            gated.gate.release()
    assert not problems, problems
    a, b = sorted(_messages(engine), key=lambda m: m.status != "sent")
    assert (a.status, b.status) == ("sent", "deferred")
    assert b.error == mail.sending.INTERRUPTED  # in flight: outcome unknown, due again
    with db.session_scope(engine) as s:
        stage = {c.subject_id: c.reminder_stage for c in s.exec(select(Consent)).all()}
    assert stage == {a.subject_id: 7, b.subject_id: None}
    assert len(audit_entries(engine, "email.sent")) == 1
    assert len(audit_entries(engine, "email.deferred")) == 1
    # The next run sends B only: no one gets the same email twice.
    assert _remind(engine, now) == {("news", "sent"): 1}
    assert _accepted(gated) == {"p0@example.com": 1, "p1@example.com": 1}
    verify_audit(engine)

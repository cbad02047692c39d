"""Email that is right for every address, over real SMTP servers on loopback (aiosmtpd), with
and without SMTPUTF8, through the real renewal-reminders sweep on both databases.

A batch with one non-ASCII address on a server without SMTPUTF8 sends every other message
exactly once over two runs, and records the bad one ``failed`` with its reason (issue 9: one
recipient got 4 copies after 2 runs). With SMTPUTF8 offered, the same address is delivered.
Every message on the wire parses with ``email.policy.strict`` (``sinks.check_wire``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from consentflow import db, mail, purposes, settings, subjects, sweeps
from consentflow.mail import Mailer, SendStatus, SmtpConfig
from consentflow.models import EmailMessage, EmailSuppression, Subject, utcnow
from tests.mail.sinks import RawSink, check_wire
from tests.support.seeding import audit_entries, count, give, verify_audit
from tests.support.smtp import use_smtp

DAY = timedelta(days=1)
STAGES = (1, 7, 30)
#: Long and non-ASCII: the subject line needs encoded words and folding.
TITLE = "Lettre d\u2019information « Nouveautés & offres spéciales » de l\u2019équipe du printemps"
SUBJECT = f'Your consent for "{TITLE}" ends on '
ASCII = ["p0@example.com", "p1@example.com", "p2@example.com"]
JOSE = "josé@example.com"  # a non-ASCII local part: needs SMTPUTF8
IDN = "Ann@Bücher.Example.com"  # a non-ASCII domain only: goes out as IDNA, no SMTPUTF8
IDN_STORED = "Ann@bücher.example.com"
IDN_WIRE = "Ann@xn--bcher-kva.example.com"


@pytest.fixture
def people(engine: Engine) -> dict[str, int]:
    """Five subjects with a consent ending in 5 days; the non-ASCII one in the middle."""
    book = [("p0", ASCII[0]), ("p1", ASCII[1]), ("jose", JOSE), ("idn", IDN), ("p2", ASCII[2])]
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title=TITLE, validity_days=365)
        ids = {ext: subjects.add(s, ext, email=address).id for ext, address in book}
    give(engine, list(ids.values()), "news", utcnow() + 5 * DAY)
    return ids  # type: ignore[return-value]


def _sink(monkeypatch: pytest.MonkeyPatch, smtputf8: bool) -> Iterator[RawSink]:
    with RawSink(smtputf8=smtputf8) as sink:
        use_smtp(monkeypatch, sink.port)
        monkeypatch.setenv("CONSENTFLOW_MAIL_FROM", "Équipe Consentement <consent@example.org>")
        settings.get_settings.cache_clear()
        yield sink
    settings.get_settings.cache_clear()


@pytest.fixture
def plain_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RawSink]:
    """A server that does not offer SMTPUTF8."""
    yield from _sink(monkeypatch, smtputf8=False)


@pytest.fixture
def utf8_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RawSink]:
    """A server that offers SMTPUTF8."""
    yield from _sink(monkeypatch, smtputf8=True)


def remind(engine: Engine, as_of: datetime, port: int) -> Counter[tuple[str, str]]:
    """One whole renewal-reminders run over one connection (so a message that broke the
    connection would show in the ones after it)."""
    total: Counter[tuple[str, str]] = Counter()
    with Mailer(SmtpConfig(host="127.0.0.1", port=port, timeout=5, pool_size=1)) as mailer:

        def step(size: int, cursor: int) -> sweeps.Batch:
            ctx = sweeps.SweepContext(as_of, mailer=mailer, stages=STAGES, engine=engine)
            return sweeps.remind_batch(ctx, size, cursor)

        for batch in sweeps.drain(step, batch_size=100):
            total.update(batch.counts)
    return total


def _messages(engine: Engine, subject_id: int) -> list[EmailMessage]:
    with db.session_scope(engine) as s:
        stmt = select(EmailMessage).where(EmailMessage.subject_id == subject_id)
        return list(s.exec(stmt.order_by(col(EmailMessage.id))).all())


def test_without_smtputf8_the_batch_goes_out_once_and_the_bad_one_fails_alone(
    engine: Engine, people: dict[str, int], plain_server: RawSink
) -> None:
    now = utcnow()
    assert remind(engine, now, plain_server.port) == {("news", "sent"): 4, ("news", "failed"): 1}
    assert remind(engine, now, plain_server.port) == {}  # the second run sends nothing again
    for address in [*ASCII, IDN_WIRE]:
        assert len(plain_server.to(address)) == 1, address
    assert len(plain_server.received) == 4
    for wire in plain_server.received:
        assert not wire.smtputf8
        msg = check_wire(wire.raw, utf8=False)
        assert msg["Subject"].strip().startswith(SUBJECT)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["From"].addresses[0].display_name == "Équipe Consentement"
    [idn] = plain_server.to(IDN_WIRE)
    assert check_wire(idn.raw)["To"].addresses[0].addr_spec == IDN_WIRE

    [failed] = _messages(engine, people["jose"])
    assert failed.status == "failed" and failed.sent_at is None
    assert failed.error == mail.NEEDS_SMTPUTF8
    [entry] = audit_entries(engine, "email.failed")
    assert entry.detail["error"] == mail.NEEDS_SMTPUTF8 and "josé" not in str(entry.detail)
    assert [m.status for m in _messages(engine, people["p1"])] == ["sent"]
    assert count(engine, EmailSuppression) == 0  # not the person's fault: not suppressed

    # Not retried run after run: the next stage is tried once, when it falls due.
    later = now + 4 * DAY + DAY / 2
    assert remind(engine, later, plain_server.port) == {("news", "sent"): 4, ("news", "failed"): 1}
    assert remind(engine, later, plain_server.port) == {}
    assert [len(plain_server.to(a)) for a in [*ASCII, IDN_WIRE]] == [2, 2, 2, 2]
    assert [m.stage for m in _messages(engine, people["jose"])] == [7, 1]
    verify_audit(engine)


def test_with_smtputf8_the_non_ascii_address_is_delivered(
    engine: Engine, people: dict[str, int], utf8_server: RawSink
) -> None:
    assert remind(engine, utcnow(), utf8_server.port) == {("news", "sent"): 5}
    [jose] = utf8_server.to(JOSE)
    assert jose.smtputf8  # MAIL FROM:<...> SMTPUTF8
    msg = check_wire(jose.raw, utf8=True)
    assert msg["To"].addresses[0].addr_spec == JOSE
    assert msg["Subject"].strip().startswith(SUBJECT)
    # The others need nothing special and get nothing special.
    for wire in utf8_server.received:
        if wire is not jose:
            assert not wire.smtputf8
            check_wire(wire.raw, utf8=False)
    assert [m.status for m in _messages(engine, people["jose"])] == ["sent"]


def test_a_stored_address_that_breaks_the_rule_fails_alone(
    engine: Engine, people: dict[str, int], plain_server: RawSink
) -> None:
    """An address stored before the rule (``a,b@...`` went to a local user ``a``) is not sent."""
    with db.session_scope(engine) as s:
        s.exec(update(Subject).where(col(Subject.id) == people["p1"]).values(email="a,b@x.com"))
    counts = remind(engine, utcnow(), plain_server.port)
    assert counts == {("news", "sent"): 3, ("news", "failed"): 2}
    assert all("a" not in w.recipients for w in plain_server.received)
    [bad] = _messages(engine, people["p1"])
    assert bad.status == "failed" and bad.error is not None
    assert bad.error.startswith("not sent: InvalidInput: bad email address")
    assert "a,b" not in bad.error


def _outgoing(to: str) -> mail.Outgoing:
    rendered = mail.Rendered("Hello", "text", "<p>html</p>", "en")
    return mail.compose(rendered, to=to, message_id=mail.new_message_id("x@example.org"))


def test_any_exception_in_one_message_is_that_message_s_outcome(plain_server: RawSink) -> None:
    """What the old builder produced for a non-ASCII address (no SMTPUTF8 flag) made aiosmtplib
    raise UnicodeEncodeError halfway through the envelope and the whole batch was recorded
    deferred; now it fails alone, its connection is dropped and the next message goes out."""
    broken = mail.Outgoing("<b@example.org>", "consent@example.org", JOSE, _outgoing(ASCII[0]).data)
    flagged = _outgoing(JOSE)
    assert flagged.smtputf8
    config = SmtpConfig(host="127.0.0.1", port=plain_server.port, timeout=5, pool_size=1)
    with Mailer(config) as mailer:
        report = mailer.send([_outgoing(ASCII[0]), broken, _outgoing(ASCII[1]), flagged])
        again = mailer.send([_outgoing(ASCII[2])])
        # The bad envelope cost its connection; the SMTPUTF8 refusal (before MAIL) did not.
        assert mailer.connections_opened == 2
    assert [r.status for r in report.results] == [
        SendStatus.SENT,
        SendStatus.FAILED,
        SendStatus.SENT,
        SendStatus.FAILED,
    ]
    assert report.unavailable is None and again.results[0].status is SendStatus.SENT
    assert (report.results[1].error or "").startswith("UnicodeEncodeError")
    assert report.results[3].error == mail.NEEDS_SMTPUTF8
    assert [w.recipients for w in plain_server.received] == [[a] for a in ASCII]


def test_long_headers_are_folded_by_the_smtp_policy() -> None:
    """A long non-ASCII subject is folded into short encoded words; the one-click link stays
    whole on one line; the message is 7-bit clean without SMTPUTF8."""
    url = "https://consent.example.org/l/" + "t" * 300 + ".sig"
    rendered = mail.Rendered(TITLE * 3, "é " * 500, "<p>" + "é" * 2000 + "</p>", "fr")
    out = mail.compose(
        rendered,
        to=IDN,
        message_id=mail.new_message_id("x@example.org"),
        unsubscribe_url=url,
        sender="Équipe « Consentement » <consent@example.org>",
    )
    assert not out.smtputf8 and out.recipient == IDN_WIRE
    msg = check_wire(out.data)
    assert msg["Subject"].strip() == TITLE * 3
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert f"List-Unsubscribe: <{url}>\r\n".encode() in out.data
    assert msg["Content-Language"] == "fr"
    utf8 = mail.compose(rendered, to=JOSE, message_id="<u@example.org>", unsubscribe_url=url)
    assert utf8.smtputf8 and utf8.recipient == JOSE
    assert check_wire(utf8.data, utf8=True)["Subject"].strip() == TITLE * 3
    assert subjects.check_email(IDN) == IDN_STORED

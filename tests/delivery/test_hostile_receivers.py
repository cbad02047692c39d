"""Whatever a receiver answers becomes a recorded attempt (issue 14, defect 1).

A hostile receiver (``tests.support.hostile.RawReceiver``: exact raw bytes on loopback) answers
with gzip bodies and bombs, NUL and control bytes, absurd ``Retry-After`` values, bytes that are
not HTTP. Beside it a healthy endpoint takes deliveries in the same run. On SQLite and
PostgreSQL: the run completes, every hostile answer is one recorded attempt that moves its
delivery on, the healthy endpoint's deliveries are recorded, and nothing is sent twice.
A failure to record one result (a database trigger refusing it) is recorded as a failed attempt.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from consentflow import db, systems
from consentflow.delivery import engine as eng
from consentflow.delivery.excerpt import EXCERPT_CHARS
from consentflow.models import Delivery, DeliveryAttempt, System, utcnow
from tests.support.hostile import RawReceiver, answer
from tests.support.webhooks import ledger, revoke

pytestmark = pytest.mark.usefixtures("allow_loopback")

FAST = eng.Options(timeout=5.0)
OK_200 = b"HTTP/1.1 200 OK"
E_500 = b"HTTP/1.1 500 Internal Server Error"
E_503 = b"HTTP/1.1 503 Service Unavailable"
GZIP = b"content-encoding: gzip"

#: name -> (raw answer, recorded status, outcome, excerpt or None: not checked)
CASES: dict[str, tuple[bytes, int | None, str, str | None]] = {
    "gzip body, 500": (
        answer(E_500, [GZIP], gzip.compress(b"internal error", mtime=0)),
        500,
        eng.RETRIED,
        "internal error",
    ),
    "gzip body, 200": (answer(OK_200, [GZIP], gzip.compress(b"ok")), 200, eng.DELIVERED, "ok"),
    "gzip bomb, 200": (
        answer(OK_200, [GZIP], gzip.compress(b"\0" * 20_000_000)),
        200,
        eng.DELIVERED,
        None,
    ),
    "NUL bytes": (answer(E_500, [], b"err\0or \0\0"), 500, eng.RETRIED, "err or"),
    "control and invalid UTF-8": (
        answer(b"HTTP/1.1 400 Bad", [], b"\xff\xfe\x1b[31mred\x07\x00"),
        400,
        eng.RETRIED,
        "\ufffd\ufffd [31mred",
    ),
    "long body": (answer(E_500, [], b"x" * 100_000), 500, eng.RETRIED, "x" * EXCERPT_CHARS),
    "Retry-After 1e20": (
        answer(E_503, [b"retry-after: 99999999999999999999"]),
        503,
        eng.RETRIED,
        None,
    ),
    "Retry-After superscript two, Latin-1": (
        answer(E_503, [b"retry-after: \xb2"]),
        503,
        eng.RETRIED,
        None,
    ),
    "Retry-After superscript two, UTF-8": (
        answer(E_503, [b"retry-after: \xc2\xb2"]),
        503,
        eng.RETRIED,
        None,
    ),
    "Retry-After year 9999": (
        answer(E_503, [b"retry-after: Fri, 31 Dec 9999 23:59:59 GMT"]),
        503,
        eng.RETRIED,
        None,
    ),
    "status 999": (answer(b"HTTP/1.1 999 Odd", [], b"odd"), 999, eng.RETRIED, "odd"),
    "not HTTP": (b"\0\x01\x02garbage\r\n\r\n", None, eng.RETRIED, None),
    "NUL in a header": (answer(E_500, [b"x-evil: a\0b"]), None, eng.RETRIED, None),
}


@pytest.fixture
def hostile() -> Iterator[RawReceiver]:
    r = RawReceiver()
    yield r
    r.close()


def add_hostile_system(engine, hostile: RawReceiver, path: str = "/evil") -> int:
    with db.session_scope(engine) as s:
        system, _ = systems.add(s, "evil", ["news"], webhook_url=hostile.url(path))
        assert system.id is not None
        return system.id


def rows_of(engine, system_id: int) -> list[tuple[Delivery, list[DeliveryAttempt]]]:
    with db.session_scope(engine) as s:
        ds = s.exec(
            select(Delivery).where(Delivery.system_id == system_id).order_by(col(Delivery.id))
        ).all()
        return [
            (
                d,
                list(
                    s.exec(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == d.id)).all()
                ),
            )
            for d in ds
        ]


def system_id(engine, name: str) -> int:
    with db.session_scope(engine) as s:
        sid = s.exec(select(System.id).where(System.name == name)).one()
        assert sid is not None
        return sid


@pytest.mark.parametrize("case", list(CASES))
def test_any_answer_becomes_a_recorded_attempt(engine, receiver, hostile, case):
    raw, status, outcome, expected_excerpt = CASES[case]
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=3)
    evil = add_hostile_system(engine, hostile)
    hostile.set("/evil", raw)
    revoke(engine, 3)
    now = utcnow()

    report = eng.deliver_due(engine, options=FAST, now=now)

    assert report.by_system()["evil"] == {outcome: 3}
    assert report.by_system()["crm"] == {eng.DELIVERED: 3}  # the healthy endpoint's counts
    assert report.failing_systems() == ([] if outcome == eng.DELIVERED else ["evil"])
    for d, attempts in rows_of(engine, system_id(engine, "crm")):
        assert d.state == "delivered" and len(attempts) == 1
    for d, [a] in rows_of(engine, evil):
        assert a.status_code == status and d.attempts == 1 and d.leased_until is None
        excerpt = a.response_excerpt or ""
        assert "\0" not in excerpt and len(excerpt) <= EXCERPT_CHARS
        if expected_excerpt is not None:
            assert excerpt == expected_excerpt
        if outcome == eng.DELIVERED:
            assert d.state == "delivered"
        else:
            assert d.state == "pending" and d.last_error
            wait = d.next_attempt_at - now
            assert timedelta(0) < wait <= timedelta(days=1.2)  # an absurd Retry-After is capped
    # nothing is sent twice: a second run at the same moment finds nothing due
    again = eng.deliver_due(engine, options=FAST, now=now)
    assert again.attempted() == 0
    assert sorted(hostile.ids("/evil").values()) == [1, 1, 1]


@pytest.fixture
def poisoned_excerpts(engine) -> None:
    """A database that refuses to store the excerpt 'poison': a real fault in the record step."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.response_excerpt = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON delivery_attempt "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON delivery_attempt "
                    "WHEN NEW.response_excerpt = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
                )
            )
    yield
    with engine.begin() as conn:
        conn.execute(
            text(
                "DROP TRIGGER refuse_poison"
                + (" ON delivery_attempt" if engine.dialect.name == "postgresql" else "")
            )
        )
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP FUNCTION refuse_poison()"))


@pytest.mark.usefixtures("poisoned_excerpts")
@pytest.mark.parametrize("status, state", [(500, "pending"), (200, "delivered")])
def test_a_result_that_cannot_be_recorded_becomes_a_recorded_attempt(
    engine, receiver, hostile, status, state, caplog
):
    ledger(engine, receiver, {"crm": "/hook"}, subjects_n=2)
    evil = add_hostile_system(engine, hostile)
    hostile.set("/evil", answer(f"HTTP/1.1 {status} X".encode(), [], b"poison"))
    revoke(engine, 2)
    now = utcnow()

    report = eng.deliver_due(engine, options=FAST, now=now)  # does not raise

    assert report.by_system()["crm"] == {eng.DELIVERED: 2}
    for d, [a] in rows_of(engine, evil):
        # the status is kept (a 2xx is an acknowledgement); what could not be stored is not
        assert a.status_code == status and a.error_class == "Unrecordable"
        assert a.response_excerpt is None and d.state == state and d.attempts == 1
    assert "could not be recorded" in caplog.text
    assert eng.deliver_due(engine, options=FAST, now=now).attempted() == 0
    assert sorted(hostile.ids("/evil").values()) == [1, 1]

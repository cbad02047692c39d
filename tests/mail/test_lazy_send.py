"""``Mailer.send`` with messages built lazily (issue 11): building the next messages overlaps with
sending the earlier ones, over a real SMTP server on loopback; a message that cannot be built
ends the batch after the ones already built were sent and handed over, and its error is raised
as it was."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from consentflow import mail
from consentflow.mail import Mailer, SendStatus
from tests.support.smtp import SmtpSink

CONTEXT = {
    "purpose_title": "News",
    "valid_until": "2030-01-31",
    "days_left": 7,
    "renew_url": "https://consent.example.org/l/renew",
    "revoke_url": "https://consent.example.org/l/revoke",
    "preferences_url": "https://consent.example.org/l/prefs",
    "withdraw_all_url": "https://consent.example.org/l/all",
}


def message(i: int) -> mail.Outgoing:
    rendered = mail.render(mail.Kind.RENEWAL_REMINDER, "en", CONTEXT)
    return mail.compose(rendered, to=f"p{i}@example.com", message_id=mail.new_message_id())


def wait_for(predicate, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)  # polling an outcome with a deadline, not a fixed wait
    return predicate()


def test_later_messages_are_built_while_earlier_ones_are_sent(smtp_sink: SmtpSink) -> None:
    seen_before_building: list[int] = []

    def built() -> Iterator[mail.Outgoing]:
        for i in range(6):
            if i == 4:  # the first messages went out before the fifth was even built
                wait_for(lambda: len(smtp_sink.received) >= 2)
                seen_before_building.append(len(smtp_sink.received))
            yield message(i)

    handed: list[int] = []
    with Mailer() as mailer:
        report = mailer.send(built(), on_result=lambda i, r: handed.append(i))
    assert seen_before_building and seen_before_building[0] >= 2
    assert [r.status for r in report.results] == [SendStatus.SENT] * 6
    assert sorted(handed) == list(range(6))
    assert sorted(r.recipients[0] for r in smtp_sink.received) == sorted(
        f"p{i}@example.com" for i in range(6)
    )


def test_a_message_that_cannot_be_built_ends_the_batch_after_the_built_ones(
    smtp_sink: SmtpSink,
) -> None:
    class Broken(Exception):
        pass

    def built() -> Iterator[mail.Outgoing]:
        yield message(0)
        yield message(1)
        raise Broken("a template is broken")

    handed: dict[int, SendStatus] = {}
    lock = threading.Lock()

    def note(i: int, r: mail.SendResult) -> None:
        with lock:
            handed[i] = r.status

    with Mailer() as mailer:
        with pytest.raises(Broken, match="a template is broken"):
            mailer.send(built(), on_result=note)
        # the mailer is still usable afterwards
        again = mailer.send([message(2)])
    assert handed == {0: SendStatus.SENT, 1: SendStatus.SENT}
    assert again.results[0].status is SendStatus.SENT
    assert len(smtp_sink.received) == 3

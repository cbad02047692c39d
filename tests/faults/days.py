"""The scenario's script, day by day (see ``scenario.py`` for how time moves).

Day 1: grants and withdrawals through the API and one-click links; the ads receiver goes down;
an expiry sweep is SIGKILLed mid-batch, then re-run; a propagate run is SIGKILLed mid-batch.
Day 2: more withdrawals; a reminder run is SIGKILLed mid-batch; SMTP answers 4xx and 5xx.
Day 3: ads comes back answering 500; the database connections of a propagate run and of a
reminder run are terminated mid-batch. Day 4: ads answers gzip bodies; a material revision and
its re-consent requests; the legacy system answers 410 (its deliveries are held). Day 5: absurd
``Retry-After`` values; malformed input on every entry point. Last day: ads is healthy again;
the last reminders; everything due is delivered. Longer runs repeat ordinary days in between.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from consentflow import db, purposes
from tests.faults.malformed import every_entry_point
from tests.faults.scenario import GZIP_500, Scenario
from tests.support.faults import OK, raw


def day_one(sc: Scenario) -> None:
    n = sc.size.subjects
    half = n // 2
    for i in range(n - 4, n):  # new grants through the API (valid from now)
        sc.api_change(f"s{i}", "profiling", "grant")
    for i in (half, half + 1):
        sc.api_change(f"s{i}", "news", "revoke")
    sc.unsubscribe(f"s{half + 2}", "news", twice=True)
    sc.unsubscribe(f"s{half + 3}", "news")
    sc.ads.down()
    sc.tally.fault("receiver ads down (connection refused) for two days")
    sc.kill_mid_sweep(sc.day(1))
    sc.flow("expiry-sweep", as_of=sc.day(1), batch_size=sc.size.batch)
    expired = "SELECT count(*) FROM consent_event WHERE action = 'expire'"
    assert sc.count(expired) == sc.size.subjects // 4  # each once, after the kill
    sc.kill_mid_delivery()
    sc.advance()  # the killed run's leases run out
    sc.propagate()


def day_two(sc: Scenario) -> None:
    sc.advance()
    half = sc.size.subjects // 2
    sc.api_change(f"s{half + 4}", "news", "revoke")
    sc.unsubscribe(f"s{half + 5}", "news")
    sc.kill_mid_reminders(sc.day(2))
    sc.advance()  # the killed run's claims are stale now
    quarter = sc.size.subjects // 4
    sc.smtp.script(f"s{quarter}@example.com", "451 4.3.0 try again later")
    sc.smtp.script(f"s{quarter + 1}@example.com", "550 5.1.1 no such mailbox")
    sc.tally.fault("SMTP 451 then recovering")
    sc.tally.fault("SMTP 550")
    sc.flow("renewal-reminders", as_of=sc.day(2), batch_size=sc.size.batch)
    sc.propagate()


def day_three(sc: Scenario) -> None:
    sc.advance()
    sc.ads.up()
    sc.ads.set(raw(b"500 Internal Server Error", body=b"database is on fire"))
    sc.tally.fault("receiver ads answers 500")
    half = sc.size.subjects // 2
    sc.api_change(f"s{half + 6}", "news", "revoke")
    sc.terminate_mid_delivery()
    sc.terminate_mid_reminders(sc.day(3))
    sc.advance()
    sc.flow("renewal-reminders", as_of=sc.day(3), batch_size=sc.size.batch)
    sc.propagate()


def day_four(sc: Scenario) -> None:
    sc.advance()
    sc.ads.set(GZIP_500)
    sc.tally.fault("receiver ads answers gzip bodies with NULs")
    attempts = "SELECT count(*) FROM delivery_attempt a JOIN delivery d ON d.id = a.delivery_id "
    attempts += "JOIN system s ON s.id = d.system_id WHERE s.name = 'ads' AND a.status_code = 500"
    before = sc.count(attempts)
    sc.legacy.set(raw(b"410 Gone"))
    sc.tally.fault("receiver legacy answers 410 Gone")
    with db.session_scope(sc.engine) as s:
        purposes.revise(s, "profiling", material=True, title="Profiling with partners")
    sc.flow("reconsent", as_of=sc.day(4), batch_size=sc.size.batch)
    half = sc.size.subjects // 2
    sc.unsubscribe(f"s{half + 1}", "profiling")
    sc.propagate()
    pending = "SELECT count(*) FROM delivery d JOIN system s ON s.id = d.system_id "
    pending += "WHERE s.name = 'ads' AND d.state = 'pending'"
    # every gzip answer became a recorded attempt (issue 14, defect 1)
    assert sc.count(attempts) - before == sc.count(pending)


def day_five(sc: Scenario) -> None:
    sc.advance()
    sc.ads.set(raw(b"429 Too Many Requests", [b"retry-after: 99999999999999999999"]))
    sc.tally.fault("Retry-After 99999999999999999999")
    sc.propagate()
    # an absurd Retry-After is capped at a day (plus the schedule's jitter), not obeyed
    too_late = "SELECT count(*) FROM delivery WHERE state = 'pending' "
    too_late += "AND next_attempt_at > now() + interval '29 hours'"
    assert sc.count(too_late) == 0
    sc.advance()
    sc.ads.set(raw(b"503 Service Unavailable", ["retry-after: ²".encode()]))
    sc.tally.fault("Retry-After ²")
    sc.propagate()
    every_entry_point(sc)


def ordinary_day(sc: Scenario, d: int) -> None:
    """A day with nothing special (the soak's filler): a withdrawal, reminders, propagation."""
    sc.advance()
    n, half = sc.size.subjects, sc.size.subjects // 2
    i = half + 7 + d % max(1, n - half - 11)  # a subject no fault day touches
    sc.api_change(f"s{i}", "news", "revoke")
    sc.api_change(f"s{i}", "news", "grant")
    sc.flow("renewal-reminders", as_of=sc.day(d), batch_size=sc.size.batch)
    sc.propagate()


def last_day(sc: Scenario) -> None:
    sc.advance()
    sc.ads.set(OK)
    sc.flow("expiry-sweep", as_of=sc.day(sc.size.days), batch_size=sc.size.batch)
    sc.flow("renewal-reminders", as_of=sc.day(sc.size.days), batch_size=sc.size.batch)
    sc.advance()
    sc.propagate()


def play(sc: Scenario) -> None:
    """The whole script; ``sc.tally.seconds`` says how long each day took."""
    sc.warm_up(2)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("seed", sc.seed),
        ("day 1", lambda: day_one(sc)),
        ("day 2", lambda: day_two(sc)),
        ("day 3", lambda: day_three(sc)),
        ("day 4", lambda: day_four(sc)),
        ("day 5", lambda: day_five(sc)),
    ]
    steps += [(f"day {d}", functools.partial(ordinary_day, sc, d)) for d in range(6, sc.size.days)]
    steps.append(("last day", lambda: last_day(sc)))
    for name, step in steps:
        began = time.monotonic()
        step()
        sc.tally.seconds[name] = round(time.monotonic() - began, 1)

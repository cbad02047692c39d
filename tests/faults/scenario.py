"""The scripted fault scenario: several simulated days of consent work while faults strike.

Time moves through the data, not the clock: the scenario's day ``d`` is the instant
``start + d days`` in the past (``start`` = now minus ``days``), validity ends and reminder
stages are seeded relative to those days, and the sweeps run with ``as_of`` = that day (a real
run may judge as of a past instant). What the engine schedules against the real clock (delivery
retries and leases, email claims) is moved a day back by ``advance`` at each day's start, as if
a day had passed. Nothing sleeps: every fault is injected when a condition shows the work is in
flight (a receiver or SMTP gate holds the first request; a backend waits at the held audit head).

The same ``Scenario`` runs in the CI test (``tests/faults/test_scenario.py``, small) and in the
soak benchmark (``bench/fault_soak.py``, more days and subjects). ``Tally`` counts faults
injected and survived; ``checks.py`` makes the end-of-scenario assertions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from consentflow import db, links, purposes, subjects, systems, tokens
from consentflow.links import LinkAction
from consentflow.models import utcnow
from consentflow.settings import get_settings
from tests.support.faults import (
    FaultReceiver,
    FlowProcess,
    GatedSmtp,
    Postgres,
    environment,
    raw,
)
from tests.support.seeding import give, seed_subjects
from tests.support.workers import eventually

DAY = timedelta(days=1)
#: How many faults strike a flow process (kills and terminated connections).
SUBPROCESS_FAULTS = 5
GZIP_500 = raw(
    b"500 Internal Server Error",
    [b"content-encoding: gzip", b"content-type: text/plain"],
    __import__("gzip").compress(b"\x00" * 200_000 + b"oops"),
)


def run_in_process(flow: str, **parameters: Any) -> Any:
    """Run ``flow`` here (on the Prefect server configured): its final state, never raising."""
    from consentflow import runs

    fn, values = runs.prepare_flow(flow, parameters)
    return fn(**values, return_state=True)


@dataclass
class Tally:
    injected: list[str] = field(default_factory=list)
    #: Per kill or termination: how many acknowledged webhooks may come again (its batch).
    in_flight_bound: int = 0
    #: Acknowledged webhooks that came again (``checks.duplicates_bounded`` counts them).
    webhooks_again: int = 0
    #: Per reminder run killed or cut off from its database: how many accepted emails may come
    #: again (one per SMTP connection: each holds at most one answered, unrecorded message).
    emails_in_flight_bound: int = 0
    #: Accepted emails that came again (``checks.no_email_twice`` counts them).
    emails_again: int = 0
    #: What the checks noted besides failures (e.g. which webhooks came again, and why).
    notes: list[str] = field(default_factory=list)
    #: Seconds each day of the script took.
    seconds: dict[str, float] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.injected.append(name)

    def line(self, survived: bool, lost: int) -> str:
        """The tally: a fault is survived when every end-of-scenario promise held."""
        return (
            f"fault suite: {len(self.injected)} faults injected, "
            f"{len(self.injected) if survived else 0} survived, {lost} items lost, "
            f"{self.webhooks_again} acknowledged webhooks sent again "
            f"(bound {self.in_flight_bound}), {self.emails_again} accepted emails sent again "
            f"(bound {self.emails_in_flight_bound})\n"
            f"  faults: {'; '.join(self.injected)}\n  seconds: {self.seconds}"
            + "".join(f"\n  note: {note}" for note in self.notes)
        )


@dataclass
class Size:
    days: int = 6
    subjects: int = 40
    batch: int = 5


@dataclass
class Scenario:
    engine: Engine
    url: str
    logs: Path
    smtp: GatedSmtp
    web: str
    size: Size = field(default_factory=Size)
    tally: Tally = field(default_factory=Tally)
    crm: FaultReceiver = field(default_factory=FaultReceiver)
    ads: FaultReceiver = field(default_factory=FaultReceiver)
    legacy: FaultReceiver = field(default_factory=FaultReceiver)
    secrets: list[str] = field(default_factory=list)
    link_tokens: list[str] = field(default_factory=list)
    admin_token: str = ""
    runs: list[FlowProcess] = field(default_factory=list)
    warm: list[FlowProcess] = field(default_factory=list)
    start: datetime = field(default_factory=lambda: utcnow() - timedelta(days=6))
    #: How a flow runs in this process, ``(flow, **parameters) -> state``.
    run_flow: Callable[..., Any] = field(default=lambda flow, **kw: run_in_process(flow, **kw))

    def __post_init__(self) -> None:
        self.pg = Postgres(self.url)
        self.start = utcnow() - timedelta(days=self.size.days)

    def day(self, d: int) -> datetime:
        return self.start + d * DAY

    @property
    def emails(self) -> list[str]:
        return [f"s{i}@example.com" for i in range(self.size.subjects)]

    def close(self) -> None:
        for proc in self.warm:
            proc.kill()
        for r in (self.crm, self.ads, self.legacy):
            r.close()
        self.pg.close()

    # ------------------------------------------------------------------------------- set-up

    def seed(self) -> None:
        """Two purposes, three systems, subjects with consents ending on the scenario's days."""
        n = self.size.subjects
        with db.session_scope(self.engine) as s:
            purposes.add(s, "news", title="News", validity_days=365)
            purposes.add(s, "profiling", title="Profiling", validity_days=365)
            for name, keys, receiver in (
                ("crm", ["news", "profiling"], self.crm),
                ("ads", ["news"], self.ads),
                ("legacy", ["profiling"], self.legacy),
            ):
                _, secret = systems.add(s, name, keys, webhook_url=receiver.url())
                assert secret
                self.secrets.append(secret)
            self.admin_token = tokens.create(s, "root", "admin")[1]
            self.secrets.append(self.admin_token)
        ids = seed_subjects(self.engine, n, prefix="s")
        quarter = n // 4
        # a quarter ends on day 1 (the expiry sweep's work), a quarter on day 7 (the reminders'
        # work: stage 7 from day 2, stage 1 from day 6), the rest in a year
        give(self.engine, ids[:quarter], "news", self.day(1) - timedelta(hours=1))
        give(self.engine, ids[quarter : 2 * quarter], "news", self.day(7))
        give(self.engine, ids[2 * quarter :], "news", utcnow() + 200 * DAY)
        give(self.engine, ids[2 * quarter : 3 * quarter], "profiling", utcnow() + 300 * DAY)

    def advance(self) -> None:
        """A day passes for what the engine schedules on the real clock."""
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE delivery SET next_attempt_at = next_attempt_at - interval '1 day', "
                    "leased_until = leased_until - interval '1 day' WHERE state = 'pending'"
                )
            )
            conn.execute(
                text(
                    "UPDATE email_message SET created_at = created_at - interval '1 day' "
                    "WHERE status = 'claimed'"
                )
            )

    def note_unrecorded(self, fault: str, first: int) -> None:
        """Note how many of the webhooks crm acknowledged to the struck run stayed unrecorded
        (still pending: they will be sent again)."""
        acked = [h.captured.headers.get("webhook-id", "") for h in self.crm.requests()[first:]]
        acked = [a for h, a in zip(self.crm.requests()[first:], acked, strict=True) if h.acked]
        ids = ", ".join(f"'{a}'" for a in acked) or "''"
        pending = self.count(
            f"SELECT count(*) FROM delivery WHERE state = 'pending' AND webhook_id IN ({ids})"
        )
        self.tally.notes.append(f"{fault}: {len(acked)} acknowledged, {pending} unrecorded")

    def count(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)

    # ---------------------------------------------------------------------- ways consent changes

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.web}/api/v1{path}", headers=headers, timeout=30, **kw)

    def api_change(self, subject: str, purpose: str, action: str) -> None:
        r = self.api("POST", f"/subjects/{subject}/consents/{purpose}/{action}")
        assert r.status_code == 200, (subject, purpose, action, r.status_code, r.text[:300])

    def link(self, subject: str, action: LinkAction, purpose: str | None = None) -> str:
        with db.session_scope(self.engine) as s:
            person = subjects.get(s, subject)
            assert person is not None and person.id is not None
            sid = person.id
            pid = purposes.get(s, purpose).id if purpose else None
            token = links.issue(s, action, sid, pid)
        self.link_tokens.append(token)
        return token

    def unsubscribe(self, subject: str, purpose: str, *, twice: bool = False) -> None:
        """The RFC 8058 one-click unsubscribe of a revoke link (a mail client may send it twice)."""
        token = self.link(subject, LinkAction.REVOKE, purpose)
        for _ in range(2 if twice else 1):
            r = httpx.post(
                f"{self.web}/l/{token}", data={"List-Unsubscribe": "One-Click"}, timeout=30
            )
            assert r.status_code == 200, (subject, r.status_code, r.text[:300])

    # ------------------------------------------------------------------------- flows, faults

    def env(self) -> dict[str, str]:
        return environment({"CONSENTFLOW_DATABASE_URL": self.url})

    def warm_up(self, n: int = 1) -> None:
        """Start ``n`` flow processes that import everything and wait for their flow."""
        for _ in range(n):
            self.warm.append(FlowProcess(self.env(), self.logs))

    def spawn(self, flow: str, *args: str) -> FlowProcess:
        """A warm flow process runs ``flow``; another one warms up for the next fault."""
        proc = self.warm.pop(0) if self.warm else FlowProcess(self.env(), self.logs)
        self.runs.append(proc.go(flow, list(args)))
        if len(self.runs) + len(self.warm) < SUBPROCESS_FAULTS:
            self.warm_up()
        return proc

    def flow(self, flow: str, **parameters: Any) -> Any:
        return self.run_flow(flow, **parameters)

    def propagate(self) -> Any:
        return self.flow("propagate", run_seconds=0.5, batch_size=self.size.batch, per_endpoint=2)

    @contextmanager
    def fault(self, name: str) -> Iterator[None]:
        self.tally.fault(name)
        began = time.monotonic()
        yield
        self.tally.seconds[name] = round(time.monotonic() - began, 1)

    def kill_mid_sweep(self, as_of: datetime) -> None:
        """SIGKILL an expiry sweep whose batch has written consents and waits at the audit head."""
        with self.fault("SIGKILL mid expiry sweep"):
            self.pg.hold_audit_head()
            try:
                proc = self.spawn("expiry-sweep", "--as-of", as_of.isoformat(), "--batch-size", "3")
                self.pg.blocked_writer("consent", 90, proc)
                proc.kill()
            finally:
                self.pg.let_go()
            # the killed batch's transaction ends with its backend: nothing of it stays
            eventually(lambda: not self.pg.flow_backends(), 60, "the killed sweep's backend gone")
            assert self.count("SELECT count(*) FROM consent_event WHERE action = 'expire'") == 0

    def kill_mid_delivery(self) -> None:
        """SIGKILL a propagate run while the crm receiver holds its first request."""
        with self.fault("SIGKILL mid delivery batch"):
            self.crm.gate.arm()
            proc = self.spawn(
                "propagate",
                "--batch-size",
                str(self.size.batch),
                "--param",
                "run_seconds=60",
                "--param",
                "per_endpoint=2",
                "--param",
                'systems=["crm"]',
            )
            first = len(self.crm.requests())
            _wait(self.crm.gate.in_flight, proc)
            proc.kill()
            self.crm.gate.release()
            self.tally.in_flight_bound += self.size.batch
            self.note_unrecorded("SIGKILL mid delivery batch", first)
            held = (
                "SELECT count(*) FROM delivery WHERE state = 'pending' AND leased_until IS NOT NULL"
            )
            assert self.count(held) >= 1  # claimed, never recorded: still pending, not lost

    def kill_mid_reminders(self, as_of: datetime) -> None:
        """SIGKILL a reminder run while the SMTP server holds its first message."""
        with self.fault("SIGKILL mid reminder batch"):
            self.smtp.gate.arm()
            proc = self.spawn(
                "renewal-reminders", "--as-of", as_of.isoformat(), "--batch-size", "3"
            )
            _wait(self.smtp.gate.in_flight, proc)
            proc.kill()
            self.smtp.gate.release()
            self.tally.emails_in_flight_bound += get_settings().smtp_pool_size

    def terminate_mid_delivery(self) -> None:
        """``pg_terminate_backend`` the propagate run's connections while crm holds a request."""
        with self.fault("database connections terminated mid delivery batch"):
            self.crm.gate.arm()
            proc = self.spawn(
                "propagate",
                "--batch-size",
                str(self.size.batch),
                "--param",
                "run_seconds=2",
                "--param",
                "per_endpoint=2",
                "--param",
                'systems=["crm"]',
            )
            first = len(self.crm.requests())
            _wait(self.crm.gate.in_flight, proc)
            assert self.pg.terminate_flow() >= 1
            self.crm.gate.release()
            proc.wait(timeout=120)  # whatever its outcome: the next run must not lose anything
            self.tally.in_flight_bound += self.size.batch
            self.note_unrecorded("connections terminated mid delivery batch", first)

    def terminate_mid_reminders(self, as_of: datetime) -> None:
        """``pg_terminate_backend`` a reminder run's connections while SMTP holds a message."""
        with self.fault("database connections terminated mid reminder batch"):
            self.smtp.gate.arm()
            proc = self.spawn(
                "renewal-reminders", "--as-of", as_of.isoformat(), "--batch-size", "3"
            )
            _wait(self.smtp.gate.in_flight, proc)
            assert self.pg.terminate_flow() >= 1
            self.smtp.gate.release()
            proc.wait(timeout=120)
            self.tally.emails_in_flight_bound += get_settings().smtp_pool_size


def _wait(event: Any, proc: FlowProcess, timeout: float = 90) -> None:
    eventually(lambda: event.is_set(), timeout, f"{proc.flow} in flight", proc.died)

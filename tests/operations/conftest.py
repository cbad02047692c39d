"""The operations set-up, built once per test module, of real parts as an operator deploys them:

* a PostgreSQL database of the module's own (``CONSENTFLOW_TEST_POSTGRES_URL`` is required: these
  tests FAIL without it, they never skip), migrated, with purposes, systems and subjects;
* a real ``prefect server start`` (``SchedulerlessServer``: no schedule puts runs of its own on
  the worker; triggers and automations act as in production);
* ``consentflow deploy`` of the repository's ``prefect.yaml`` (the pool, every deployment and its
  triggers, the zombie automation with ``--zombie-after 60``), run as an operator runs it;
* a ``prefect worker start --pool consentflow-pool`` with the full ``CONSENTFLOW_*`` environment
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30``, the webhook receiver allowed, SMTP at the sink,
  alerts to the receiver's ``/alerts`` by Apprise ``json://`` and to the compliance address);
* a signed-webhook receiver (``tests.support.webhooks.Receiver``) and an SMTP sink whose DATA
  stage can be held for chosen recipients (``HeldSmtpSink``: a slow mail server).

The web API is the real application in this process (``TestClient``) talking to the same Prefect
server; the CLI runs as a subprocess. Systems: ``crm`` (purpose ``news``) at ``/crm``, ``slow``
(purpose ``ads``) at ``/slow``, ``broken`` (purpose ``promo``) at ``/broken``; subjects
``news-0..3``, ``ads-0..5``, ``promo-0`` with given consent, and ``trial-0`` (email, purpose
``trial`` valid 5 days: a renewal reminder is due).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from consentflow import db, lifecycle, purposes, settings, subjects, systems, tokens
from consentflow.delivery.wakeup import SLOT_LOCK_KEY
from consentflow.lifecycle import Actor
from tests.support.database import PG_URL
from tests.support.net import free_port
from tests.support.smtp import Handler, SmtpSink
from tests.support.webhooks import Receiver
from tests.support.workers import SchedulerlessServer, Worker, eventually, flow_runs_of, state_of

ROOT = Path(__file__).resolve().parents[2]
POOL = "consentflow-pool"
COMPLIANCE = "compliance@example.org"
REMINDED = "trial0@example.org"
#: What the propagate loop the tests start is asked for: long enough to outlive the module, one
#: round of requests per batch (so a claim's lease is one webhook timeout plus 60 s).
LOOP = {"run_seconds": 600, "batch_size": 6, "per_endpoint": 6}
WEBHOOK_TIMEOUT = 10
DEPLOY = [sys.executable, "-m", "consentflow.cli", "deploy"]


@dataclass
class HeldHandler(Handler):
    """Holds the DATA stage of a message to an address in ``held`` until ``gate`` is set."""

    held: set[str] = field(default_factory=set)
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: int = 0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if not self.gate.is_set() and self.held & {r.lower() for r in envelope.rcpt_tos}:
            with self.lock:
                self.waiting += 1
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 300)
        return await super().handle_DATA(server, session, envelope)


class HeldSmtpSink(SmtpSink):
    handler: HeldHandler

    def __init__(self) -> None:
        self.handler = HeldHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)


@dataclass
class Ops:
    root: Path
    server: SchedulerlessServer
    url: str
    engine: Engine
    receiver: Receiver
    sink: HeldSmtpSink
    secrets: dict[str, str]
    token: str
    deploy_output: str
    worker: Worker | None = None
    workers_started: int = 0

    @property
    def database(self) -> str:
        return str(make_url(self.url).database)

    def worker_env(self) -> dict[str, str]:
        env = self.server.client_env(self.root / "worker-home")
        env.update(
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_LOGGING_LEVEL="INFO",
            PREFECT_LOGGING_EXTRA_LOGGERS="consentflow",
            CONSENTFLOW_DATABASE_URL=self.url,
            CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            CONSENTFLOW_WEBHOOK_TIMEOUT=str(WEBHOOK_TIMEOUT),
            CONSENTFLOW_SMTP_HOST="127.0.0.1",
            CONSENTFLOW_SMTP_PORT=str(self.sink.port),
            CONSENTFLOW_SMTP_TIMEOUT="120",
            CONSENTFLOW_MAIL_FROM="Consent Desk <consent@example.org>",
            CONSENTFLOW_PUBLIC_URL="https://consent.example.org",
            CONSENTFLOW_COMPLIANCE_EMAIL=COMPLIANCE,
            CONSENTFLOW_ALERT_URLS=f"json://127.0.0.1:{self.receiver.port}/alerts",
        )
        return env

    def cli_env(self) -> dict[str, str]:
        env = self.server.client_env(self.root / "cli-home")
        env["CONSENTFLOW_DATABASE_URL"] = self.url
        return env

    def new_worker(self) -> Worker:
        self.workers_started += 1
        log = self.root / f"worker-{self.workers_started}.log"
        self.worker = Worker(self.worker_env(), log, POOL).start()
        return self.worker

    def api_run(self, flow: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/runs/FLOW`` as the compliance officer (carol); the 202 body."""
        from tests.support.web import bearer, client

        with self.server.settings():
            answer = client().post(f"/api/v1/runs/{flow}", json=body, headers=bearer(self.token))
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    def slots_held(self) -> int:
        """Propagate loop slots (advisory locks) held in this module's database."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :key"
                        " AND d.datname = :name"
                    ),
                    {"key": SLOT_LOCK_KEY, "name": self.database},
                ).scalar_one()
            )

    def loop(self) -> str:
        """A propagate run looping on the worker (holding a slot): the running one, or one
        started through the API with ``LOOP``. Its run id."""
        running = [r for r in flow_runs_of(self.server, "propagate") if _type(r) == "RUNNING"]
        run_id = str(running[-1].id) if running else self.api_run("propagate", LOOP)["run_id"]
        eventually(
            lambda: state_of(self.server, run_id) == "RUNNING" and self.slots_held() >= 1,
            120,
            f"propagate run {run_id} looping on the worker",
            self.diagnose,
        )
        return run_id

    def diagnose(self) -> str:
        worker = self.worker.log_tail() if self.worker is not None else "(no worker)"
        return f"--- worker log:\n{worker}\n--- server:\n{self.server.log_tail(10)}"


def _type(run: Any) -> str:
    return run.state.type.value if run.state is not None else "-"


@pytest.fixture(scope="module")
def ops_database() -> Iterator[str]:
    """A migrated PostgreSQL database of this module's own, dropped at the end."""
    if not PG_URL:
        pytest.fail(
            "CONSENTFLOW_TEST_POSTGRES_URL is not set: the operations tests run on PostgreSQL only"
        )
    admin = create_engine(db.normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"consentflow_ops_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(engine: Engine, receiver: Receiver) -> tuple[dict[str, str], str]:
    """The module's ledger (see the module docstring); webhook secrets by system, carol's token."""
    secrets: dict[str, str] = {}
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly newsletter", validity_days=365)
        purposes.add(s, "ads", title="Personalised ads", validity_days=365)
        purposes.add(s, "trial", title="Trial offers", validity_days=5)
        purposes.add(s, "promo", title="Partner promotions", validity_days=365)
        for name, purpose in (("crm", "news"), ("slow", "ads"), ("broken", "promo")):
            _, secret = systems.add(s, name, [purpose], webhook_url=receiver.url(f"/{name}"))
            assert secret
            secrets[name] = secret
        for i in range(4):
            subjects.add(s, f"news-{i}")
        for i in range(6):
            subjects.add(s, f"ads-{i}")
        subjects.add(s, "trial-0", email=REMINDED)
        subjects.add(s, "promo-0")
        token = tokens.create(s, "carol", "compliance")[1]
    with db.session_scope(engine) as s:
        for i in range(4):
            lifecycle.grant(s, f"news-{i}", "news", Actor())
        for i in range(6):
            lifecycle.grant(s, f"ads-{i}", "ads", Actor())
        lifecycle.grant(s, "trial-0", "trial", Actor())
        lifecycle.grant(s, "promo-0", "promo", Actor())
    return secrets, token


def deploy(server: SchedulerlessServer, root: Path, url: str) -> str:
    """``consentflow deploy`` as an operator runs it; its output."""
    env = server.client_env(root / "deploy-home")
    env.update(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", CONSENTFLOW_DATABASE_URL=url)
    done = subprocess.run(
        [*DEPLOY, "--project-dir", str(ROOT), "--zombie-after", "60"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr + server.log_tail()
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def ops(ops_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    """The whole set-up (module docstring), torn down in reverse."""
    root = tmp_path_factory.mktemp("operations")
    receiver, sink = Receiver(), HeldSmtpSink()
    sink.start()
    server = SchedulerlessServer(root)
    ops: Ops | None = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONSENTFLOW_DATABASE_URL", ops_database)
        mp.setenv("CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
        settings.get_settings.cache_clear()
        db._cached_engine.cache_clear()
        engine = db.get_engine(ops_database)
        try:
            with ThreadPoolExecutor(1) as background:  # the server boots while the ledger fills
                booted = background.submit(server.start)
                secrets, token = seed(engine, receiver)
                booted.result()
            output = deploy(server, root, ops_database)
            ops = Ops(root, server, ops_database, engine, receiver, sink, secrets, token, output)
            ops.new_worker()
            yield ops
        finally:
            if ops is not None and ops.worker is not None:
                ops.worker.stop()
            server.stop()
            sink.handler.gate.set()
            sink.stop()
            receiver.release.set()
            receiver.close()
            engine.dispose()
            settings.get_settings.cache_clear()
            db._cached_engine.cache_clear()

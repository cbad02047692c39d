"""Fault injection for the standing fault suite (``tests/faults/``) and its soak benchmark.

Real parts only: ``FaultReceiver`` is a webhook receiver on loopback (raw sockets, so it can
answer anything) that can be *down* (its listening socket closed: connection refused, the same
port taken again when it comes back), answer scripted raw bytes, or hold the first request of a
batch until released (``gate``), signalling that the batch is in flight. ``GatedSmtp`` is the
suite's aiosmtpd sink with the same gate at the DATA stage. ``FlowProcess`` runs ``consentflow
run FLOW --local`` in a subprocess (its own session, output captured to files) so a test can
SIGKILL it whole (``tests.support.workers.kill_tree``). ``Postgres`` is an admin connection that
sees the flow's backends by their ``application_name`` (the subprocess sets ``PGAPPNAME``),
holds the audit chain's head row to stop a batch inside its transaction, and terminates the
flow's connections (``pg_terminate_backend``).

Synchronisation is by condition only: a gate's ``in_flight`` event, a backend seen waiting on
a lock, a process that ended; ``eventually`` polls such a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from consentflow import db
from tests.support.smtp import Handler, SmtpSink
from tests.support.webhooks import Captured
from tests.support.workers import eventually, kill_tree

#: The ``application_name`` of every database connection a ``FlowProcess`` opens.
FLOW_APP = "consentflow-fault-flow"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def raw(status: bytes, headers: list[bytes] | None = None, body: bytes = b"") -> bytes:
    """Raw HTTP response bytes (a ``content-length`` added unless given)."""
    lines = [b"HTTP/1.1 " + status, *(headers or [])]
    if not any(h.lower().startswith(b"content-length:") for h in headers or []):
        lines.append(b"content-length: " + str(len(body)).encode())
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Gate:
    """Holds the first request that arrives while armed until ``release``; ``in_flight`` is set
    when it arrives. One use per ``arm``."""

    armed: bool = False
    in_flight: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def arm(self) -> None:
        self.in_flight.clear()
        self.released.clear()
        self.armed = True

    def take(self) -> bool:
        """For the handler: True if this request is the one to hold (then wait ``released``)."""
        if not self.armed or self.in_flight.is_set():
            return False
        self.in_flight.set()
        return True

    def release(self) -> None:
        self.armed = False
        self.released.set()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


@dataclass
class Hit:
    """One request: what arrived, and whether the receiver acknowledged it (answered 2xx)."""

    captured: Captured
    acked: bool


def _peer_gone(conn: socket.socket) -> bool:
    """Whether the client closed its end (a read would return EOF or fail)."""
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True
    finally:
        conn.setblocking(True)


class FaultReceiver:
    """A webhook receiver that can be down, hostile, slow to answer, or healthy."""

    def __init__(self) -> None:
        self.answer = OK
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.gate = Gate()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.server: _Server | None = None
        self.up()

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).decode("latin-1").split()
                headers: dict[str, str] = {}
                while (h := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = self.rfile.read(int(headers.get("content-length") or 0))
                cap = Captured(line[1] if len(line) > 1 else "", headers, body)
                if receiver.gate.take():
                    receiver.gate.released.wait(60)
                    if _peer_gone(self.connection):  # killed while held: nothing acknowledged
                        with receiver.lock:
                            receiver.hits.append(Hit(cap, acked=False))
                        return
                with receiver.lock:
                    answer = receiver.answer
                try:
                    self.wfile.write(answer)
                    self.wfile.flush()
                    acked = answer.split(b" ", 2)[1].startswith(b"2")
                except OSError:
                    acked = False  # the client is gone: nothing was acknowledged to it
                with receiver.lock:
                    receiver.hits.append(Hit(cap, acked))

        return Handler

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> None:
        if self.server is None:
            self.server = _Server(("127.0.0.1", self.port), self._handler())
            threading.Thread(
                target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()

    def down(self) -> None:
        """Connection refused from now on (the listening socket is closed)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def set(self, answer: bytes) -> None:
        with self.lock:
            self.answer = answer

    def requests(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)

    def acked_ids(self) -> dict[str, int]:
        """webhook-id -> how many times it was acknowledged."""
        out: dict[str, int] = {}
        for hit in self.requests():
            if hit.acked:
                key = hit.captured.headers.get("webhook-id", "")
                out[key] = out.get(key, 0) + 1
        return out

    def close(self) -> None:
        self.gate.release()
        self.down()


class GatedHandler(Handler):
    """``tests.support.smtp.Handler`` with a gate before a message is accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.gate.take():
            await asyncio.get_running_loop().run_in_executor(None, self.gate.released.wait, 60)
            return "421 4.3.0 closing"  # the client was killed meanwhile: nothing accepted
        return await super().handle_DATA(server, session, envelope)


class GatedSmtp(SmtpSink):
    """An ``SmtpSink`` whose handler can hold a message in flight (``self.gate``)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from tests.support.net import free_port

        self.handler: GatedHandler = GatedHandler()
        self.gate = self.handler.gate
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> GatedSmtp:
        self.controller.start()
        return self


@dataclass
class Finished:
    code: int
    out: str
    err: str
    killed: bool


#: A flow process: imports what ``consentflow run`` needs (Prefect, the flows) first, then waits
#: for its command line on stdin, so the import time is off the fault's critical path.
RUNNER = """
import json, sys
import prefect, prefect.flow_engine, flows.propagate, flows.expiry_sweep  # warm the imports
import flows.renewal_reminders, flows.reconsent
from consentflow.cli import main
args = json.loads(sys.stdin.readline())
main(args)
"""


class FlowProcess:
    """``consentflow run FLOW --local ARGS`` in a subprocess of its own session: started warm
    (``RUNNER``), told which flow to run by ``go``."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.out")))
        self.flow = "(not started)"
        self.out_path = logs / f"{n:02d}-runner.out"
        self.err_path = logs / f"{n:02d}-runner.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RUNNER],
                env={**env, "PGAPPNAME": FLOW_APP},
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.killed = False

    def go(self, flow: str, args: list[str]) -> FlowProcess:
        assert self.proc.stdin is not None
        self.flow = flow
        self.proc.stdin.write(
            (json.dumps(["run", flow, "--local", "--json", *args]) + "\n").encode()
        )
        self.proc.stdin.close()
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and anything it started."""
        kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)
        self.killed = True

    def wait(self, timeout: float = 120) -> Finished:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.flow} did not end within {timeout:.0f} s") from None
        return Finished(
            self.proc.returncode,
            self.out_path.read_text(encoding="utf-8", errors="replace"),
            self.err_path.read_text(encoding="utf-8", errors="replace"),
            self.killed,
        )

    def died(self) -> str:
        """For ``eventually``'s diagnosis: the process's state and its stderr's tail."""
        state = "running" if self.alive() else f"ended with {self.proc.returncode}"
        tail = self.err_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        return f"{self.flow} {state}; stderr tail:\n{tail}"


class Postgres:
    """An admin connection to the scenario's database (autocommit)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(db.normalise_url(url), isolation_level="AUTOCOMMIT")
        self.database = self.engine.url.database
        self._holder: Connection | None = None

    def flow_backends(self, *, waiting_on_lock: bool = False) -> list[int]:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = :d AND application_name = :a"
        if waiting_on_lock:
            sql += " AND wait_event_type = 'Lock'"
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), {"d": self.database, "a": FLOW_APP}).all()
        return [int(r[0]) for r in rows]

    def writing(self, pid: int, table: str) -> bool:
        """Whether backend ``pid``'s open transaction has written to ``table``."""
        sql = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = :p AND c.relname = :t AND l.mode = 'RowExclusiveLock' AND l.granted"
        )
        with self.engine.connect() as conn:
            return bool(conn.execute(text(sql), {"p": pid, "t": table}).scalar())

    def hold_audit_head(self) -> None:
        """Lock the audit chain's head row: every writer of an audit entry waits at it."""
        conn = self.engine.connect().execution_options(isolation_level="READ COMMITTED")
        conn.begin()
        conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        self._holder = conn

    def let_go(self) -> None:
        if self._holder is not None:
            self._holder.rollback()
            self._holder.close()
            self._holder = None

    def terminate_flow(self) -> int:
        """``pg_terminate_backend`` every connection of the flow process; how many."""
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :d AND application_name = :a"
        )
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), {"d": self.database, "a": FLOW_APP}).scalar() or 0)

    def blocked_writer(self, table: str, timeout: float, proc: FlowProcess) -> int:
        """The flow backend that waits at the held audit head with ``table`` written."""

        def found() -> int | None:
            for pid in self.flow_backends(waiting_on_lock=True):
                if self.writing(pid, table):
                    return pid
            return None

        return eventually(found, timeout, f"{proc.flow} blocked mid-batch", proc.died)

    def close(self) -> None:
        self.let_go()
        self.engine.dispose()


def environment(extra: dict[str, Any]) -> dict[str, str]:
    """This process's environment (the test's settings) plus ``extra``."""
    return {**os.environ, **{k: str(v) for k, v in extra.items()}}

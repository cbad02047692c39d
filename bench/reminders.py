"""Benchmark: renewal-reminder emails per second through the sweep, against a bare aiosmtplib loop.

Not a test. It creates a database (SQLite in a temp dir, or a PostgreSQL database of its own with
``--url``, dropped at the end) with, per round (``--rounds``, default 3), one purpose and ``N``
subjects (``--subjects``, default 1,000), each with an address and a given consent whose validity
ends in 3 days (so the 7-day stage is due), and starts an SMTP server on 127.0.0.1 (aiosmtpd, in
a subprocess so that it does not share this process's interpreter lock; it accepts every message
and keeps its exact bytes). Then:

(a) the sweep: ``sweeps.remind_batch`` (what each task of the ``renewal-reminders`` flow runs,
    without Prefect around it), batch after batch (``--batch-size``, the flow's default 500)
    until nothing is due, with the ``mail.Mailer`` a flow run uses (``CONSENTFLOW_SMTP_POOL_SIZE``
    connections, default 2). Per batch: the claim transaction (subjects locked, one
    ``email_message`` row per email, each consent advanced, fresh signed links), every message
    rendered from its templates and built, sent, and each outcome recorded as the server
    answers it, before that connection sends its next message (the claim protocol:
    ``sweeps/claims.py``); messages are built while the earlier ones are being sent. Timed
    from the first batch to the last commit; every consent is checked advanced and every
    message ``sent``, and the server counted N messages.
(b) the baseline: the very messages the server received in (a), byte for byte, sent again with
    a bare ``aiosmtplib.SMTP`` loop over one connection (``sendmail`` per message, no database,
    no rendering); and, for reference, the same over as many connections as the mailer's pool.

Each round runs (a) then (b) on that round's purpose; it prints every round and the medians.
Target (issue 11): (a) >= 0.6x the one-connection loop.

    python bench/reminders.py                                  # SQLite, 3 x 1,000 emails
    python bench/reminders.py --subjects 300 --rounds 1        # a quick run
    python bench/reminders.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/reminders.py --profile                        # cProfile of the sweep's thread
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pickle
import pstats
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("CONSENTFLOW_SECRET_KEY", secrets.token_hex(32))
os.environ.setdefault("CONSENTFLOW_PUBLIC_URL", "https://consent.example.com")

STAGES = (30, 7, 1)


# --------------------------------------------------------------------------------------------
# The SMTP server process
# --------------------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 accepted"


def _server_main(dump: str) -> None:
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # a free port (the controller checks it by connecting)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:  # "dump": write the messages so far to the file and forget them
        if line.strip() == "dump":
            Path(dump).write_bytes(pickle.dumps(sink.messages))
            print(json.dumps({"messages": len(sink.messages)}), flush=True)
            sink.messages = []
    controller.stop()


class Server:
    def __init__(self, tmp: Path) -> None:
        self.dump = tmp / "messages.pickle"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--server", str(self.dump)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port: int = self._read()["port"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the SMTP server process ended")
        out: dict[str, Any] = json.loads(line)
        return out

    def take(self) -> list[tuple[str, list[str], bytes]]:
        """The messages received since the last call, with their envelopes."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        self._read()
        messages: list[tuple[str, list[str], bytes]] = pickle.loads(self.dump.read_bytes())
        return messages

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def make_database(url: str | None, tmp: Path) -> tuple[str, Any]:
    """A fresh database URL and a function that removes it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from consentflow import db

    if url is None:
        return f"sqlite:///{tmp / 'reminders.db'}", lambda: None
    parsed = make_url(db.normalise_url(url))
    name = f"consentflow_bench_mail_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        parsed.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def fill(engine: Any, n: int, rounds: int, as_of: Any) -> None:
    """Per round, a purpose ``news<r>`` and ``n`` subjects with an address, each a given consent
    to it ending in 3 days."""
    from consentflow import db, lifecycle, purposes, subjects
    from consentflow.lifecycle import Actor, ImportRow
    from consentflow.models import ActorType, Channel, State

    end = as_of + timedelta(days=3)
    for r in range(rounds):
        with db.session_scope(engine) as s:
            purposes.add(s, f"news{r}", title=f"Monthly news {r}", validity_days=365)
            ids = [
                subjects.add(s, f"p{r}-{i}", email=f"p{r}-{i}@example.com", locale="en").id
                for i in range(n)
            ]
        with db.session_scope(engine) as s:
            rows = [
                ImportRow(i, f"news{r}", State.GIVEN, end - timedelta(days=300), end) for i in ids
            ]
            lifecycle.import_consents(
                s, rows, Actor(ActorType.IMPORT, Channel.IMPORT, name="bench")
            )


# --------------------------------------------------------------------------------------------
# (a) the sweep, (b) the bare loops
# --------------------------------------------------------------------------------------------


def run_sweep(
    engine: Any, port: int, as_of: Any, batch: int, purpose: str, profile: bool
) -> tuple[int, float]:
    from consentflow import mail, sweeps

    config = mail.SmtpConfig.from_settings()
    config = mail.SmtpConfig(host="127.0.0.1", port=port, pool_size=config.pool_size)
    counts: Counter[tuple[str, str]] = Counter()
    profiler = cProfile.Profile() if profile else None
    with mail.Mailer(config) as mailer:
        ctx = sweeps.SweepContext(
            as_of,
            run_id="bench-reminders",
            engine=engine,
            mailer=mailer,
            stages=STAGES,
            purposes=(purpose,),
        )
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        for result in sweeps.drain(
            lambda size, cursor: sweeps.remind_batch(ctx, size, cursor), batch_size=batch
        ):
            counts.update(result.counts)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
    if profiler:
        stats = pstats.Stats(profiler).sort_stats("cumulative")
        stats.print_stats(30)
        stats.sort_stats("tottime").print_stats(20)
    assert set(counts) == {(purpose, "sent")}, counts
    return counts[(purpose, "sent")], elapsed


async def _bare(messages: list[tuple[str, list[str], bytes]], port: int, connections: int) -> int:
    """Send ``messages`` over ``connections`` reused aiosmtplib connections; how many accepted."""
    import aiosmtplib

    queue = list(reversed(messages))
    sent = 0

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while queue:
            sender, recipients, data = queue.pop()
            errors, _ = await smtp.sendmail(sender, recipients, data)
            sent += not errors
        await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return sent


def run_bare(messages: list[tuple[str, list[str], bytes]], port: int, connections: int) -> float:
    started = time.perf_counter()
    sent = asyncio.run(_bare(messages, port, connections))
    elapsed = time.perf_counter() - started
    assert sent == len(messages), (sent, len(messages))
    return sent / elapsed


def check(engine: Any, n: int) -> None:
    """Every consent advanced to the 7-day stage, every message recorded sent."""
    from sqlmodel import func, select

    from consentflow import db
    from consentflow.models import Consent, EmailMessage

    with db.session_scope(engine, readonly=True) as s:
        stages = dict(
            s.exec(
                select(Consent.reminder_stage, func.count()).group_by(Consent.reminder_stage)
            ).all()
        )
        status = dict(
            s.exec(select(EmailMessage.status, func.count()).group_by(EmailMessage.status)).all()
        )
    assert stages == {7: n} and status == {"sent": n}, (stages, status)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="PostgreSQL server URL (default: SQLite in a temp dir)")
    ap.add_argument("--subjects", type=int, default=1000, help="reminders per round")
    ap.add_argument("--rounds", type=int, default=3, help="sweep + baselines, interleaved")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="cProfile the sweep's thread")
    ap.add_argument("--server", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        _server_main(args.server)
        return

    from consentflow import db, settings
    from consentflow.models import utcnow

    settings.get_settings.cache_clear()
    tmp = Path(tempfile.mkdtemp(prefix="consentflow-bench-mail-"))
    url, drop = make_database(args.url, tmp)
    server = Server(tmp)
    try:
        engine = db.make_engine(url)
        db.upgrade(engine)
        as_of = utcnow()
        started = time.perf_counter()
        fill(engine, args.subjects, args.rounds, as_of)
        pool = settings.get_settings().smtp_pool_size
        print(
            f"{engine.dialect.name}: {args.rounds} rounds of {args.subjects:,} reminders, "
            f"batches of {args.batch_size}, mailer pool of {pool} connections (filled in "
            f"{time.perf_counter() - started:.1f} s); SMTP server in a subprocess"
        )
        rates: dict[str, list[float]] = {"sweep": [], "one": [], "pool": []}
        size = 0.0
        for r in range(args.rounds):
            sent, elapsed = run_sweep(
                engine, server.port, as_of, args.batch_size, f"news{r}", args.profile and r == 0
            )
            messages = server.take()
            assert len(messages) == sent == args.subjects, (len(messages), sent)
            rates["sweep"].append(sent / elapsed)
            rates["one"].append(run_bare(messages, server.port, 1))
            assert len(server.take()) == sent
            rates["pool"].append(run_bare(messages, server.port, pool))
            assert len(server.take()) == sent
            size = sum(len(m[2]) for m in messages) / len(messages)
            print(
                f"  round {r + 1}: sweep {rates['sweep'][-1]:7,.0f}/s, bare one connection "
                f"{rates['one'][-1]:7,.0f}/s, bare {pool} connections {rates['pool'][-1]:7,.0f}/s"
            )
        check(engine, args.subjects * args.rounds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"medians over {args.rounds} rounds (messages of {size:,.0f} bytes on average):")
        print(f"  (a) sweep: remind_batch, claim/send/record      {med['sweep']:9,.0f} emails/s")
        print(f"  (b) bare aiosmtplib, one connection              {med['one']:9,.0f} emails/s")
        print(
            f"  (b) bare aiosmtplib, {pool} connections              {med['pool']:9,.0f} emails/s"
        )
        ratio = med["sweep"] / med["one"]
        met = "met" if ratio >= 0.6 else "NOT met"
        print(f"\nsweep / one-connection loop = {ratio:.2f} (target >= 0.6: {met})")
        print(f"sweep / {pool}-connection loop = {med['sweep'] / med['pool']:.2f}")
    finally:
        server.close()
        drop()


if __name__ == "__main__":
    main()

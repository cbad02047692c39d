"""``consentflow demo``: the lifecycle flows on a synthetic population, with nothing to set up.

A new SQLite database in a temporary directory, a local SMTP sink on loopback that keeps every
email in memory, and an embedded Prefect (no server): the four lifecycle flows run exactly as a
deployment would run them, then the audit chain is verified. Nothing outside the temporary
directory (and Prefect's home) is touched, and the environment is restored afterwards.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from consentflow import audit, db, lifecycle, purposes, settings, subjects, systems
from consentflow.cli._common import app
from consentflow.cli.run import _hermetic_prefect
from consentflow.errors import ConsentflowError
from consentflow.lifecycle import Actor, ImportRow
from consentflow.models import (
    ActorType,
    Channel,
    ConsentRequest,
    EmailMessage,
    RequestKind,
    RequestStatus,
    State,
    utcnow,
)

DAY = timedelta(days=1)


# --------------------------------------------------------------------------------------------
# A local SMTP sink
# --------------------------------------------------------------------------------------------


class _Sink:
    """Accepts every message on 127.0.0.1 and keeps its headers (aiosmtpd, in a thread)."""

    def __init__(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:  # pragma: no cover - aiosmtpd ships with consentflow
            raise ConsentflowError(
                "the demo needs aiosmtpd for its local mail sink: pip install aiosmtpd"
            ) from None
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy

        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append({k: str(v) for k, v in msg.items()})
        return "250 2.0.0 kept by the consentflow demo sink"

    def __enter__(self) -> _Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables, and put everything back afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    settings.get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings.get_settings.cache_clear()


# --------------------------------------------------------------------------------------------
# The synthetic population
# --------------------------------------------------------------------------------------------


def _seed(engine: Any, now: datetime) -> dict[str, int]:
    """Subjects, purposes and consents in every state; returns what it made, for the printout."""
    importer = Actor(ActorType.IMPORT, Channel.IMPORT, name="demo-seed")
    people = [f"demo-{i:03d}" for i in range(1, 61)]
    with db.session_scope(engine) as s:
        purposes.add(s, "newsletter", title="Monthly newsletter", validity_days=365)
        purposes.add(s, "analytics", title="Product analytics", validity_days=180)
        purposes.add(s, "profiling", title="Personalised offers", validity_days=365)
        systems.add(
            s,
            "crm",
            ["newsletter", "profiling"],
            webhook_url="https://crm.example.com/hooks/consent",
        )
        ids = {}
        for i, name in enumerate(people):
            email = None if i % 20 == 19 else f"{name}@example.com"
            locale = "fr" if i % 4 == 1 else "en"
            ids[name] = subjects.add(s, name, email=email, locale=locale).id

    def given(name: str, purpose: str, valid_until: datetime, state: State = State.GIVEN) -> Any:
        return ImportRow(ids[name], purpose, state, valid_until - 300 * DAY, valid_until)

    rows = []
    # newsletter: 8 whose validity ended (due for the sweep), 10 ending within 30 days (due for a
    # reminder, at different stages), 20 with months to go, 3 already expired before.
    for i, name in enumerate(people[:8]):
        rows.append(given(name, "newsletter", now - (i + 1) * DAY))
    for i, name in enumerate(people[8:18]):
        rows.append(
            given(name, "newsletter", now + [0.5, 2, 5, 6, 12, 18, 22, 25, 28, 29][i] * DAY)
        )
    for i, name in enumerate(people[18:38]):
        rows.append(given(name, "newsletter", now + (60 + 10 * i) * DAY))
    for name in people[38:41]:
        rows.append(given(name, "newsletter", now - 40 * DAY, State.EXPIRED))
    # analytics and profiling: given on version 1, before the material revisions below.
    for name in people[20:36]:
        rows.append(given(name, "analytics", now + 120 * DAY))
    for name in people[40:46]:
        rows.append(given(name, "profiling", now + 200 * DAY))
    with db.session_scope(engine) as s:
        lifecycle.import_consents(s, rows, importer)

    agent = Actor(ActorType.AGENT, Channel.SUPPORT, name="demo-agent")
    web = Actor(ActorType.SUBJECT, Channel.WEB)
    with db.session_scope(engine) as s:
        for name in people[30:33]:  # withdrawn
            lifecycle.revoke(s, name, "newsletter", web)
        for name in people[46:50]:  # refused
            lifecycle.refuse(s, name, "analytics", web)
        for name in people[50:60]:  # asked, not yet answered
            lifecycle.request(s, name, "newsletter", agent)
        # Material revisions: everyone on an older version must confirm again (the re-consent
        # flow asks them); an editorial one asks nobody.
        purposes.revise(
            s, "analytics", material=True, title="Product analytics, shared with our processor"
        )
        purposes.revise(s, "profiling", material=True, title="Personalised offers and partners")
        purposes.revise(s, "newsletter", material=False, title="Our monthly newsletter")
        lifecycle.invalidate(s, people[45], "profiling", agent)  # invalidated by hand

    with db.session_scope(engine) as s:
        _backdate(s, ids, people, now)
    return {"subjects": len(people), "purposes": 3, "systems": 1}


def _backdate(s: Session, ids: dict[str, int], people: list[str], now: datetime) -> None:
    """History the demo cannot wait for: requests asked weeks ago, and a re-consent campaign for
    "profiling" that started 31 days ago (its deadline has passed)."""
    cr = ConsentRequest
    asked = {
        people[50]: (now - 9 * DAY, 0, None),
        people[51]: (now - 9 * DAY, 0, None),
        people[52]: (now - 10 * DAY, 0, None),
        people[53]: (now - 20 * DAY, 1, now - 8 * DAY),
        people[54]: (now - 30 * DAY, 2, now - 9 * DAY),  # last follow-up sent: lapses now
        people[55]: (now - 30 * DAY, 2, now - 8 * DAY),
    }
    for name, (requested_at, sent, last) in asked.items():
        s.exec(
            update(cr)
            .where(cr.subject_id == ids[name], cr.status == RequestStatus.OPEN.value)
            .values(requested_at=requested_at, followups_sent=sent, last_sent_at=last)
        )
    profiling = purposes.get(s, "profiling")
    for name in people[40:45]:
        s.add(
            ConsentRequest(
                subject_id=ids[name],
                purpose_id=profiling.id,
                purpose_version=profiling.current_version,
                kind=RequestKind.RECONSENT.value,
                status=RequestStatus.OPEN.value,
                requested_at=now - 31 * DAY,
                deadline=now - DAY,
                last_sent_at=now - 31 * DAY,
            )
        )
    # One of them confirmed in time: renewing on the new version answers the request.
    lifecycle.renew(s, people[44], "profiling", Actor(ActorType.SUBJECT, Channel.EMAIL_LINK))


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _print_summary(summary: Any, what: str) -> None:
    typer.echo(f"\n{summary.flow}: {what}")
    typer.echo(f"  run {summary.run_id}, {summary.outcome}")
    rows = summary.rows()
    if not rows:
        typer.echo("  nothing to do")
    for row in rows:
        typer.echo(f"  {row['purpose']:<12} {row['outcome']:<20} {row['count']:>5}")


@app.command("demo")
def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            help="Where to create the demo database (default: a new temporary directory)."
        ),
    ] = None,
) -> None:
    """Run the lifecycle flows on a synthetic population (SQLite, embedded Prefect, SMTP sink)."""
    workdir = Path(directory or tempfile.mkdtemp(prefix="consentflow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "consentflow-demo.db"
    if path.exists():
        raise ConsentflowError(f"{path} exists already: choose another --directory")
    url = f"sqlite:///{path}"
    _hermetic_prefect()
    with (
        _Sink() as sink,
        _environment(
            {
                "CONSENTFLOW_DATABASE_URL": url,
                "CONSENTFLOW_SMTP_HOST": "127.0.0.1",
                "CONSENTFLOW_SMTP_PORT": str(sink.port),
                "CONSENTFLOW_SMTP_STARTTLS": "false",
                "CONSENTFLOW_SMTP_USERNAME": None,
                "CONSENTFLOW_SMTP_PASSWORD": None,
                "CONSENTFLOW_MAIL_FROM": "consentflow demo <consent@example.org>",
            }
        ),
    ):
        engine = db.get_engine(url)
        try:
            _run(engine, url, path, sink)
        finally:
            engine.dispose()


def _run(engine: Any, url: str, path: Path, sink: _Sink) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Heartbeats detect crashed runs on workers; an embedded demo needs none (each sync run
    # would otherwise end on a whole second).
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        _flows(engine, url, path, sink)


def _flows(engine: Any, url: str, path: Path, sink: _Sink) -> None:
    from flows import collection_followups, expiry_sweep, reconsent, renewal_reminders

    now = utcnow()
    db.upgrade(engine)
    made = _seed(engine, now)
    typer.echo(f"consentflow demo: database {path}")
    typer.echo(
        f"seeded {made['subjects']} subjects, {made['purposes']} purposes (two revised "
        "materially, one editorially), consents in every state, 6 open requests due for "
        "follow-up or lapse, a re-consent campaign past its deadline, and a downstream "
        "system (crm) with a webhook"
    )
    typer.echo(f"local SMTP sink on 127.0.0.1:{sink.port}; Prefect runs embedded")

    runs = [
        (expiry_sweep.expiry_sweep, expiry_sweep.Params(), "consents whose validity ended"),
        (
            renewal_reminders.renewal_reminders,
            renewal_reminders.Params(),
            "reminders before the validity ends (30, 7, 1 days; nearest stage only)",
        ),
        (
            collection_followups.collection_followups,
            collection_followups.Params(),
            "follow-ups on unanswered requests, then lapse",
        ),
        (
            reconsent.reconsent,
            reconsent.Params(),
            "re-consent after material revisions; invalidation at the deadline",
        ),
    ]
    for flow_fn, params, what in runs:
        _print_summary(flow_fn(params), what)

    with db.session_scope(engine) as s:
        sent = s.exec(
            select(EmailMessage.kind, EmailMessage.status, func.count())
            .group_by(col(EmailMessage.kind), col(EmailMessage.status))
            .order_by(col(EmailMessage.kind), col(EmailMessage.status))
        ).all()
    one_click = sum(1 for m in sink.messages if "List-Unsubscribe-Post" in m)
    typer.echo(
        f"\nemails received by the sink: {len(sink.messages)} (text and HTML each; "
        f"{one_click} with RFC 8058 one-click withdrawal headers)"
    )
    for kind, status, n in sent:
        typer.echo(f"  {kind:<22} {status:<10} {n:>5}")
    if sink.messages:
        sample = sink.messages[0]
        typer.echo(f"  e.g. to {sample.get('To')}: {sample.get('Subject')}")

    again = expiry_sweep.expiry_sweep(expiry_sweep.Params())
    typer.echo(f"\nexpiry-sweep again: {again.total('expired')} expired (idempotent)")

    with db.session_scope(engine) as s:
        result = audit.verify(s)
    if not result.ok:
        raise ConsentflowError(f"audit trail broken at entry {result.first_bad}: {result.problem}")
    typer.echo(
        f"\naudit trail intact: {result.entries} entries, head {result.head_seq}:{result.head_hash}"
    )
    typer.echo(
        "\nExplore it:\n"
        f"  export CONSENTFLOW_DATABASE_URL={url}\n"
        "  consentflow consent history demo-001\n"
        "  consentflow audit export --subject demo-041 | head\n"
        "  consentflow audit verify"
    )

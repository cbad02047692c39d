"""``consentflow demo``: the lifecycle flows on a synthetic population, with nothing to set up.

A new SQLite database in a temporary directory, a local SMTP sink and a webhook receiver on
loopback that keep what they get in memory, and an embedded Prefect (no server; a throw-away
Prefect home unless one is chosen explicitly, see ``cli.run._hermetic_prefect``): the four
lifecycle flows run exactly as a deployment would run them, then ``propagate`` delivers the
withdrawals they produced to two downstream systems (one healthy, one answering 503), one
request's signature is checked with the public ``standardwebhooks`` package (when installed), and
the audit chain is verified. The subjects speak English, French, German or have no language
recorded, so the emails come out localised; every email the sink received is kept whole as an
``.eml`` file in ``<directory>/emails/``. It ends with how to open the result in the web app: the
``consentflow serve`` command, one signed preference link for a seeded French subject (the
people's side, no sign-in; issued as a support agent would, audited ``link.issued``) and a
compliance token for the dashboard. Nothing outside the demo's directory is touched, and
consentflow's environment is restored afterwards. Failure mode: ``ConsentflowError`` (one line)
if the directory already holds a demo database, or if the audit chain does not verify.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from consentflow import (
    db,
    integrity,
    lifecycle,
    link_requests,
    purposes,
    settings,
    subjects,
    systems,
    tokens,
)
from consentflow.cli._common import app
from consentflow.cli._demo_local import Receiver, Sink
from consentflow.cli.run import _hermetic_prefect, _quiet_prefect_logs, summary_rows
from consentflow.delivery.health import endpoint_health
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
#: The seeded subjects' languages, in turn: the emails come out in each (None: no locale
#: recorded, so the web pages follow the browser's Accept-Language and emails are in English).
LOCALES: tuple[str | None, ...] = ("en", "fr", "de", None)
#: The subject whose preference page the demo links to (French; a reminder, a re-consent
#: request and a history of several purposes).
SHOWN = "demo-022"
#: Where, under the demo's directory, the emails the sink received are kept.
EMAILS = "emails"


class _Notes(logging.Handler):
    """Collects consentflow's warnings during the demo, to print each once, in its place."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextmanager
def _notes(logger_name: str) -> Iterator[_Notes]:
    logger = logging.getLogger(logger_name)
    notes, propagate = _Notes(), logger.propagate
    logger.addHandler(notes)
    logger.propagate = False
    try:
        yield notes
    finally:
        logger.removeHandler(notes)
        logger.propagate = propagate


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


#: The purposes' titles in French and German, per notice version (1: first, 2: revised).
_TITLES: dict[tuple[str, int], tuple[str, str]] = {
    ("newsletter", 1): ("Lettre d'information mensuelle", "Monatlicher Newsletter"),
    ("newsletter", 2): ("Notre lettre d'information mensuelle", "Unser monatlicher Newsletter"),
    ("analytics", 1): ("Statistiques d'utilisation", "Produktanalyse"),
    ("analytics", 2): (
        "Statistiques d'utilisation, partagées avec notre sous-traitant",
        "Produktanalyse, geteilt mit unserem Auftragsverarbeiter",
    ),
    ("profiling", 1): ("Offres personnalisées", "Personalisierte Angebote"),
    ("profiling", 2): (
        "Offres personnalisées et partenaires",
        "Personalisierte Angebote und Partner",
    ),
}


def _texts(key: str, version: int) -> dict[str, dict[str, str]]:
    fr, de = _TITLES[(key, version)]
    return {"fr": {"title": fr}, "de": {"title": de}}


def _register(
    s: Session, people: list[str], receiver: Receiver
) -> tuple[dict[str, int], dict[str, str]]:
    """The purposes (with French and German titles), two downstream systems with webhooks to
    ``receiver`` and the subjects; returns the subjects' ids and each system's webhook secret."""
    secrets: dict[str, str] = {}
    for key, title, days in (
        ("newsletter", "Monthly newsletter", 365),
        ("analytics", "Product analytics", 180),
        ("profiling", "Personalised offers", 365),
    ):
        purposes.add(s, key, title=title, validity_days=days, texts=_texts(key, 1))
    for name, keys in (("crm", ["newsletter", "profiling"]), ("ads", ["profiling"])):
        _, secret = systems.add(s, name, keys, webhook_url=receiver.url(f"/hooks/{name}"))
        assert secret is not None
        secrets[name] = secret
    ids: dict[str, int] = {}
    for i, name in enumerate(people):
        email = None if i % 20 == 19 else f"{name}@example.com"
        added = subjects.add(s, name, email=email, locale=LOCALES[i % 4])
        assert added.id is not None  # flushed by add
        ids[name] = added.id
    return ids, secrets


def _seed(engine: Any, now: datetime, receiver: Receiver) -> dict[str, str]:
    """Subjects, purposes and consents in every state, and two downstream systems with webhooks
    to ``receiver``; returns each system's webhook secret."""
    importer = Actor(ActorType.IMPORT, Channel.IMPORT, name="demo-seed")
    people = [f"demo-{i:03d}" for i in range(1, 61)]
    with db.session_scope(engine) as s:
        ids, secrets = _register(s, people, receiver)

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
            s,
            "analytics",
            material=True,
            title="Product analytics, shared with our processor",
            texts=_texts("analytics", 2),
        )
        purposes.revise(
            s,
            "profiling",
            material=True,
            title="Personalised offers and partners",
            texts=_texts("profiling", 2),
        )
        purposes.revise(
            s,
            "newsletter",
            material=False,
            title="Our monthly newsletter",
            texts=_texts("newsletter", 2),
        )
        lifecycle.invalidate(s, people[45], "profiling", agent)  # invalidated by hand

    with db.session_scope(engine) as s:
        _backdate(s, ids, people, now)
    return secrets


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
            .where(col(cr.subject_id) == ids[name], col(cr.status) == RequestStatus.OPEN.value)
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
    rows = summary_rows(summary.as_dict())
    if not rows:
        typer.echo("  nothing to do")
    for name, outcome, n in rows:
        typer.echo(f"  {name:<12} {outcome:<20} {n:>5}")


@app.command("demo")
def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            help="Where to create the demo database (default: a new temporary directory)."
        ),
    ] = None,
) -> None:
    """Run the lifecycle flows and webhook propagation on a synthetic population (SQLite,
    embedded Prefect, local SMTP sink and webhook receiver)."""
    workdir = Path(directory or tempfile.mkdtemp(prefix="consentflow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "consentflow-demo.db"
    if path.exists():
        raise ConsentflowError(f"{path} exists already: choose another --directory")
    url = f"sqlite:///{path}"
    _hermetic_prefect()
    with (
        Sink() as sink,
        Receiver() as receiver,
        _environment(
            {
                "CONSENTFLOW_DATABASE_URL": url,
                "CONSENTFLOW_SMTP_HOST": "127.0.0.1",
                "CONSENTFLOW_SMTP_PORT": str(sink.port),
                "CONSENTFLOW_SMTP_STARTTLS": "false",
                "CONSENTFLOW_SMTP_USERNAME": None,
                "CONSENTFLOW_SMTP_PASSWORD": None,
                "CONSENTFLOW_MAIL_FROM": "consentflow demo <consent@example.org>",
                # The links in the emails point at `consentflow serve`'s default address.
                "CONSENTFLOW_PUBLIC_URL": None,
                # Webhooks may go to the loopback receiver (refused by default: SSRF rules).
                "CONSENTFLOW_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            }
        ),
    ):
        engine = db.get_engine(url)
        try:
            _run(engine, url, path, sink, receiver)
        finally:
            engine.dispose()


def _run(engine: Any, url: str, path: Path, sink: Sink, receiver: Receiver) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    _quiet_prefect_logs()
    # Heartbeats detect crashed runs on workers; an embedded demo needs none (each sync run
    # would otherwise end on a whole second).
    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        _notes("consentflow.mail") as notes,
    ):
        _flows(engine, url, path, sink, receiver, notes)


def _flows(
    engine: Any, url: str, path: Path, sink: Sink, receiver: Receiver, notes: _Notes
) -> None:
    from consentflow import runs as flow_runs

    now = utcnow()
    db.upgrade(engine)
    secrets = _seed(engine, now, receiver)
    typer.echo(f"consentflow demo: database {path}")
    typer.echo(
        "seeded 60 subjects, 3 purposes (two revised materially, one editorially), consents "
        "in every state, 6 open requests due for follow-up or lapse, a re-consent campaign "
        "past its deadline"
    )
    typer.echo(
        f"downstream systems: crm (newsletter, profiling) and ads (profiling), webhooks to a "
        f"receiver on 127.0.0.1:{receiver.port} where ads answers 503"
    )
    typer.echo(f"local SMTP sink on 127.0.0.1:{sink.port}; Prefect runs embedded")

    steps = [
        ("expiry-sweep", {}, "consents whose validity ended"),
        (
            "renewal-reminders",
            {},
            "reminders before the validity ends (30, 7, 1 days; nearest stage only)",
        ),
        ("collection-followups", {}, "follow-ups on unanswered requests, then lapse"),
        ("reconsent", {}, "re-consent after material revisions; invalidation at the deadline"),
        (
            "propagate",
            {"run_seconds": 0},  # deliver what is due once, then end (nothing more comes)
            "webhooks for the withdrawals, expiries and invalidations above",
        ),
    ]
    for name, values, what in steps:
        flow_fn, params = flow_runs.prepare_flow(name, values)
        _print_summary(flow_fn(**params), what)

    _show_webhooks(engine, receiver, secrets)
    _show_emails(engine, sink, notes, path.parent / EMAILS)

    expiry_fn, expiry_params = flow_runs.prepare_flow("expiry-sweep", {})
    again = expiry_fn(**expiry_params)
    typer.echo(f"\nexpiry-sweep again: {again.total('expired')} expired (idempotent)")

    with db.session_scope(engine) as s:
        # The people's side, as a support agent would open it for someone (audited as such).
        shown = link_requests.issue_for(
            s, SHOWN, "preferences", actor=Actor(ActorType.AGENT, Channel.SUPPORT, name="demo")
        )
    with db.session_scope(engine) as s:
        result = integrity.check(s)
        _, token = tokens.create(s, "demo-compliance", "compliance")
    if not result["ok"]:
        problem = result["problem"] or result["history_problem"]
        raise ConsentflowError(f"audit trail or history broken: {problem}")
    typer.echo(
        f"\naudit trail intact: {result['entries']} entries, head {result['head']}; "
        "the consent history matches it"
    )
    typer.echo(
        "\nExplore it:\n"
        f"  export CONSENTFLOW_DATABASE_URL={url}\n"
        "  consentflow consent history demo-001\n"
        "  consentflow deliveries health\n"
        "  consentflow audit export --subject demo-041 | head\n"
        "  consentflow audit verify\n"
        "\nIn the web app (dashboard, API, the links in the emails):\n"
        f"  CONSENTFLOW_DATABASE_URL={url} consentflow serve\n"
        f"  then open {SHOWN}'s preference page, the people's side (in French; no sign-in,\n"
        f"  the link is the key, valid until {shown.expires_at:%Y-%m-%d}):\n"
        f"  {shown.url}\n"
        "  or open http://127.0.0.1:8000/login and sign in with this compliance token, made\n"
        f"  for the demo database only: {token}"
    )


def _show_webhooks(engine: Any, receiver: Receiver, secrets: dict[str, str]) -> None:
    crm, ads = receiver.at("/hooks/crm"), receiver.at("/hooks/ads")
    typer.echo(
        f"\nwebhooks received on 127.0.0.1:{receiver.port}: crm {len(crm)} (answered 200), "
        f"ads {len(ads)} (answered 503: retried later, never dropped)"
    )
    if crm:
        _, headers, body = crm[0]
        try:
            from standardwebhooks import Webhook
        except ImportError:  # a test extra: pip install standardwebhooks to see this line
            pass
        else:
            event = Webhook(secrets["crm"]).verify(body, headers)
            data = event["data"]
            typer.echo(
                f"  signature verified with standardwebhooks: {headers['webhook-id']}, "
                f"{event['type']} of {data['purpose']} for {data['subject']}"
            )
    with db.session_scope(engine, readonly=True) as s:
        health = endpoint_health(s)
    typer.echo("delivery health per endpoint:")
    for h in health:
        oldest = (
            f"{h.oldest_undelivered_age_s} s" if h.oldest_undelivered_age_s is not None else "-"
        )
        typer.echo(
            f"  {h.system:<5} {'ok' if h.ok else 'NOT OK':<7} {h.status}, delivered {h.delivered}, "
            f"pending {h.pending} (retrying {h.retrying}), dead {h.dead}, "
            f"failures in 24 h {h.failures_24h}, oldest undelivered {oldest}"
        )


def _show_emails(engine: Any, sink: Sink, notes: _Notes, directory: Path) -> None:
    with db.session_scope(engine, readonly=True) as s:
        sent = s.exec(
            select(EmailMessage.kind, EmailMessage.status, func.count())
            .group_by(col(EmailMessage.kind), col(EmailMessage.status))
            .order_by(col(EmailMessage.kind), col(EmailMessage.status))
        ).all()
    links = sum(1 for m in sink.messages if "List-Unsubscribe" in m)
    one_click = sum(1 for m in sink.messages if "List-Unsubscribe-Post" in m)
    typer.echo(
        f"\nemails received by the sink: {len(sink.messages)} (text and HTML each; "
        f"{links} with a List-Unsubscribe withdrawal link, {one_click} with RFC 8058 one-click)"
    )
    for kind, status, n in sent:
        typer.echo(f"  {kind:<22} {status:<10} {n:>5}")
    kept = sink.save(directory)
    typer.echo(
        f"  kept whole in {directory}{os.sep} ({len(kept)} .eml files; any mail program opens them)"
    )
    if sink.messages:
        sample = sink.messages[0]
        typer.echo(f"  e.g. to {sample.get('To')}: {sample.get('Subject')}")
    for message in notes.messages:
        typer.echo(f"  note: {message}")

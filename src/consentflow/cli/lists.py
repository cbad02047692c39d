"""``consentflow list COHORT``: a cohort list from the terminal (``reports.cohorts``), with the
API's vocabulary: the same cohort names, the same filters (``--purpose``, ``--state``, ...: the
query parameters of ``GET /api/v1/lists/{cohort}``) and the same rows as its export
(``GET /api/v1/lists/{cohort}/export``), byte for byte.

The whole list is streamed page by page as JSON Lines (default) or CSV: to stdout as it is read,
or to ``--output FILE``, written beside it under a temporary name and renamed into place once
complete. A one-line summary (count, SHA-256 of the subjects' ids, the audit entry) goes to
stderr. The operator at the terminal holds the database, so ``--include email`` is allowed here.

Failure modes, one line on stderr and exit 2, nothing written (no file, no audit entry): an
unknown cohort, a bad filter value (the message names the filter), a filter the cohort does not
take, an unknown purpose or system, an ``--output`` that cannot be written. Once rows have gone
out the ``cohort.exported`` audit entry is written whatever happens next; an export cut short
records the rows written before it ended and ``complete: false`` (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consentflow import db
from consentflow.actors import agent_actor
from consentflow.cli._common import app, connect, fail
from consentflow.cli.export import FORMATS, _operator, deliver
from consentflow.reports import cohorts

_Opt = Annotated[str | None, typer.Option(show_default=False)]


# Long: one option per filter of the API's vocabulary; the body is a few lines.
@app.command("list")
def list_cohort(
    cohort: Annotated[
        str, typer.Argument(help=f"One of: {', '.join(c.value for c in cohorts.Cohort)}.")
    ],
    purpose: _Opt = None,
    state: _Opt = None,
    channel: _Opt = None,
    locale: _Opt = None,
    version: _Opt = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 (exclusive).")] = None,
    system: _Opt = None,
    kind: _Opt = None,
    days: Annotated[str | None, typer.Option(help="expiring: within this many days.")] = None,
    asked: Annotated[str | None, typer.Option(help="not-reconfirmed: yes or no.")] = None,
    status: Annotated[str | None, typer.Option(help="deliveries: dead or undelivered.")] = None,
    action: Annotated[str | None, typer.Option(help="changes: grant, revoke, ...")] = None,
    due_since: Annotated[str | None, typer.Option(help="requests: deadline from (ISO).")] = None,
    due_until: Annotated[str | None, typer.Option(help="requests: deadline before (ISO).")] = None,
    include: Annotated[
        str | None, typer.Option(help="email: add the email address column.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (default) or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Every row of a cohort list (the people behind a dashboard number), filtered like the
    API's lists; audited (count and SHA-256 of the subjects' ids)."""
    names = [c.value for c in cohorts.Cohort]
    if cohort not in names:
        fail(f"unknown list {cohort[:40]!r}: use one of {', '.join(names)}", 2)
    if fmt not in FORMATS:
        fail(f"bad --format {fmt[:20]!r}: use {' or '.join(FORMATS)}", 2)
    if include not in (None, "email"):
        fail(f"bad --include {include[:20]!r}: use email", 2)
    raw = {
        "purpose": purpose, "state": state, "channel": channel, "locale": locale,
        "version": version, "since": since, "until": until, "system": system, "kind": kind,
        "days": days, "asked": asked, "status": status, "action": action,
        "due_since": due_since, "due_until": due_until,
    }  # fmt: skip
    chosen = cohorts.Cohort(cohort)
    filters = cohorts.parse_filters(raw)
    engine = connect()
    with db.session_scope(engine, readonly=True) as session:
        q = cohorts.prepare(session, chosen, filters, email=include == "email")
    actor = agent_actor(_operator())
    export = cohorts.Export(cohort=chosen, query=q, actor=actor, format=fmt, engine=engine)
    seq = deliver(export, output)  # an unwritable --output: refused, unaudited
    where = f" to {output}" if output is not None else ""
    done = "" if export.complete else " (cut short)"
    typer.echo(
        f"{export.count} rows of {cohort}{where}{done}: sha256 {export.sha256}, audit entry {seq}",
        err=True,
    )
    if not export.complete:
        raise typer.Exit(1)

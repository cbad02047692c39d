"""What every command module shares: the Typer apps, output helpers, one session per command."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from consentflow import db, timeutil, views
from consentflow.delivery import events
from consentflow.settings import ENV_PREFIX, get_settings

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Record consent, keep it true over time, and make the rest of the company obey it.",
)
db_app = typer.Typer(no_args_is_help=True, help="Create or upgrade the database schema.")
purpose_app = typer.Typer(no_args_is_help=True, help="Purposes and their versioned notices.")
subject_app = typer.Typer(no_args_is_help=True, help="The people whose consent is recorded.")
consent_app = typer.Typer(no_args_is_help=True, help="Grant, refuse, revoke, renew and inspect.")
system_app = typer.Typer(no_args_is_help=True, help="Downstream systems and their purposes.")
audit_app = typer.Typer(no_args_is_help=True, help="Verify and export the audit trail.")
for sub, name in (
    (db_app, "db"),
    (purpose_app, "purpose"),
    (subject_app, "subject"),
    (consent_app, "consent"),
    (system_app, "system"),
    (audit_app, "audit"),
):
    app.add_typer(sub, name=name)


@app.callback()
def startup() -> None:
    # The entry point's one side effect, explicit rather than on import: after a commit that
    # enqueued deliveries (a revoke, a replay, an import with --propagate, resuming an
    # endpoint), emit the event that wakes the propagate deployment. Commands that write no
    # outbox rows never trigger it; nothing is emitted without PREFECT_API_URL.
    events.install()
    _check_settings()


def _check_settings() -> None:
    """A bad ``CONSENTFLOW_*`` variable stops every command at once, in one line."""
    try:
        get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}" if first["loc"] else "settings"
        fail(f"bad configuration: {name}: {first['msg'].removeprefix('Value error, ')}", 2)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"consentflow: {message}", err=True)
    raise SystemExit(code)


def emit(data: BaseModel | list[Any] | Any, as_json: bool, text: Callable[[], None]) -> None:
    """Print ``text()``, or with ``--json`` the data: a view from ``consentflow.views`` (or a
    list of them) as its JSON form with its deprecated aliases (``views.cli_json``)."""
    if as_json:
        if isinstance(data, BaseModel) or (
            isinstance(data, list) and data and isinstance(data[0], BaseModel)
        ):
            data = views.cli_json(data)
        typer.echo(json.dumps(data, indent=2, default=_json_default))
    else:
        text()


def _json_default(value: Any) -> Any:
    return timeutil.iso_z(value) if isinstance(value, datetime) else str(value)


def parse_time(value: str | None, option: str) -> datetime | None:
    """ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z; a time without zone is taken as UTC."""
    return timeutil.parse_instant(value, option)


@contextmanager
def session(*, readonly: bool = False) -> Iterator[Session]:
    """One transaction for the whole command, on a database that has a schema."""
    engine = db.get_engine()
    db.ensure_schema(engine)
    with db.session_scope(engine, readonly=readonly) as s:
        yield s


def fmt_time(ts: datetime | None) -> str:
    """An instant as the CLI prints it in text mode."""
    return timeutil.display(ts)

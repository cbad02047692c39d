"""What every command module shares: the Typer apps, output helpers, one session per command.

Bad input is one line on stderr and exit 2 before anything is written, whatever its kind:

- an argument that is not valid UTF-8 (its undecodable bytes arrive as lone surrogates, which no
  column can store) is refused before any command runs (``_Arguments.parse_args``);
- a database that cannot be reached (wrong name, user, host, a missing SQLite directory) says
  ``cannot connect to the database: ...`` (``connect``), not that the schema is missing;
- a value the database itself refuses (``DataError``: too long, NUL, a bad encoding) that got
  past the services' checks becomes ``InvalidInput`` in ``session`` rather than a
  ``database error`` (exit 1), which is kept for faults that are not the request's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session
from typer.core import TyperGroup

from consentflow import db, timeutil, views
from consentflow.errors import InvalidInput
from consentflow.settings import ENV_PREFIX, get_settings


class _Arguments(TyperGroup):
    """The root group: refuses an argument that is not valid UTF-8 before anything runs."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        for position, arg in enumerate(args, 1):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = ord(arg[exc.start]) - 0xDC00  # surrogateescape: U+DC80..U+DCFF
                raise InvalidInput(
                    f"argument {position} is not valid UTF-8 (byte 0x{byte:02x}): "
                    "give every argument as UTF-8 text"
                ) from None
        return list(super().parse_args(ctx, args))


app = typer.Typer(
    cls=_Arguments,
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


def connect(*, schema: bool = True) -> Engine:
    """The configured database's engine, once it answers (and, with ``schema``, has ours).

    A server that refuses the connection (an unknown database or role, a bad password, nothing
    listening, a SQLite file in a missing directory) raises ``InvalidInput``
    ``cannot connect to the database: WHY``, the driver's first line."""
    engine = db.get_engine()
    try:
        with engine.connect():
            pass
    except (OperationalError, InterfaceError) as exc:
        raise InvalidInput(f"cannot connect to the database: {first_line(exc)}") from None
    if schema:
        db.ensure_schema(engine)
    return engine


@contextmanager
def session(*, readonly: bool = False) -> Iterator[Session]:
    """One transaction for the whole command, on a database that has a schema.

    A value the database refuses (``DataError``) rolls the command back and is a mistake in the
    request (exit 2), named in one line."""
    engine = connect()
    try:
        with db.session_scope(engine, readonly=readonly) as s:
            yield s
    except DataError as exc:
        raise InvalidInput(f"the database refused a value: {first_line(exc)}") from None


def first_line(exc: DBAPIError) -> str:
    """The first line of what the database driver said, spaces collapsed."""
    return " ".join(str(exc.orig or exc).split("\n")[0].split())


def fmt_time(ts: datetime | None) -> str:
    """An instant as the CLI prints it in text mode."""
    return timeutil.display(ts)

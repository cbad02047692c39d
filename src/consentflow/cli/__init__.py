"""The ``consentflow`` command line: a thin door onto the same functions the web app uses.

Conventions every command keeps: ``--json`` prints machine-readable output on stdout; a mistake in
the request (unknown subject, bad date, malformed file) prints one line on stderr and exits 2; a
change the rules refuse exits 1; nothing is written in either case, because each command is one
transaction.

Each module of this package registers its commands on ``app`` when imported; ``main`` imports
them all, so adding a command group means adding a module here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, ProgrammingError

from consentflow.cli._common import app, fail
from consentflow.errors import ConsentflowError

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures become one line on stderr and an exit code.

    Click runs outside its standalone mode so that its own errors (a missing argument, an
    unknown option) also come out as one plain line, like ours, rather than a decorated box.
    """
    try:
        code = app(args=argv, prog_name="consentflow", standalone_mode=False)
    except typer.Abort:
        fail("aborted", 1)
    except typer.TyperException as exc:  # Click's own errors, as vendored by Typer
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            raise SystemExit(2) from None
        status = getattr(exc, "exit_code", 1)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None and status == 2 else ""
        fail(f"{exc.format_message()}{where}", status)
    except ConsentflowError as exc:
        fail(str(exc), exc.exit_code)
    except DataError as exc:  # a value the database refuses is a mistake in the input
        fail(f"the database refused a value: {_first_line(exc)}", 2)
    except (OperationalError, ProgrammingError) as exc:
        text = _first_line(exc)
        # SQLite's "no such table", PostgreSQL's 'relation "x" does not exist' (not a missing
        # database or role, which cli._common.connect reports as "cannot connect").
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            fail("the database has no consentflow schema: run `consentflow db upgrade`", 2)
        fail(f"database error: {text}", 1)
    except DBAPIError as exc:
        fail(f"database error: {_first_line(exc)}", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


def _first_line(exc: DBAPIError) -> str:
    lines = (str(exc.orig) if exc.orig else str(exc)).splitlines()
    return lines[0] if lines else type(exc).__name__


__all__ = ["app", "main"]

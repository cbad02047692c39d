"""``consentflow export eligible``: the transfer gate from the terminal (``consentflow.transfers``).

Streams every subject whose consent lets SYSTEM use their data for PURPOSE right now, with the
evidence (consent event, notice version, end of validity), as JSON Lines (the API's
``GET /api/v1/export/eligible``, byte for byte) or CSV, page by page: to stdout as it is read,
or to ``--output FILE``, written beside it under a temporary name and renamed into place only
once complete. A one-line summary (count, SHA-256 of the ids, the audit entry) goes to stderr.

Failure modes, one line on stderr, nothing written (no file, no audit entry): a bad ``--format``,
an unknown system or purpose, an ``--output`` that cannot be written: exit 2; a system not
registered for the purpose (``system_not_authorised``): exit 1, like ``consentflow check``'s
"not allowed". Once rows have gone out, the ``transfer.exported`` audit entry is written
whatever happens next: an export cut short (the reader of stdout went away, Ctrl-C, a database
failure) records the rows written before it ended and ``complete: false``; with ``--output`` no
file is left then.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Annotated

import typer

from consentflow import transfers
from consentflow.actors import agent_actor
from consentflow.cli._common import app, connect, fail
from consentflow.errors import InvalidInput
from consentflow.exports import AuditedExport

export_app = typer.Typer(no_args_is_help=True, help="Consent-filtered exports (transfer gate).")
app.add_typer(export_app, name="export")

FORMATS = ("jsonl", "csv")


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "operator"


def _open(output: Path | None) -> tuple[IO[bytes], Path | None]:
    """Where the rows go: stdout, or a new temporary file beside ``output`` (and its path)."""
    if output is None:
        return sys.stdout.buffer, None
    if output.is_dir():
        raise InvalidInput(f"cannot write --output {output}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    except OSError as exc:
        raise InvalidInput(f"cannot write --output {output}: {exc.strerror}") from None
    return os.fdopen(fd, "wb"), Path(tmp)


def deliver(export: AuditedExport, output: Path | None) -> int:
    """Write an audited export (``transfers.Export``, ``cohorts.Export``) to ``output`` or stdout
    a chunk at a time, and record its audit entry however the writing ends; returns the
    entry's seq.

    An ``output`` that cannot be written is refused before anything is read or audited; a file
    appears whole or not at all (a temporary file beside it, renamed at the end); a reader that
    goes away (``| head``) stops the export quietly, and the entry records what was written."""
    out, tmp = _open(output)
    try:
        try:
            for chunk in export.chunks():
                out.write(chunk)
                out.flush()
        finally:
            seq = export.finish()
        if tmp is not None and output is not None:
            out.close()
            os.replace(tmp, output)
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if tmp is not None:
            out.close()
            tmp.unlink(missing_ok=True)
    return seq


@export_app.command("eligible")
def export_eligible(
    purpose: Annotated[str, typer.Option(help="The purpose the data is for.")],
    system: Annotated[str, typer.Option(help="The system the data goes to.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (default) or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Everyone whose consent lets SYSTEM use their data for PURPOSE now, with the evidence;
    audited (count and SHA-256 of the ids sent)."""
    if fmt not in FORMATS:
        fail(f"bad --format {fmt[:20]!r}: use {' or '.join(FORMATS)}", 2)
    actor = agent_actor(_operator())
    export = transfers.open_export(purpose, system, actor, fmt=fmt, engine=connect())
    seq = deliver(export, output)
    where = f" to {output}" if output is not None else ""
    done = "" if export.complete else " (cut short)"
    typer.echo(
        f"{export.count} subjects for {purpose} to {system}{where}{done}: "
        f"sha256 {export.sha256}, audit entry {seq}",
        err=True,
    )
    if not export.complete:
        raise typer.Exit(1)

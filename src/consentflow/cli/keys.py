"""``consentflow keys``: list the instance keys (by fingerprint) and rotate them.

``keys list`` prints each key's fingerprint, which one signs, the reference key's fingerprint,
how many sealed values are under the newest key and under older ones, and whether a rotation is
pending: what an operator checks before retiring an old key (docs/keys.md). ``keys rotate``
rotates or finishes a rotation (``consentflow.rotation``). Neither prints, logs or audits a key:
fingerprints only. A refused rotation (a failing ``audit verify``, a key to prepend first, a
value no key opens) is one line on stderr, exit 1; a key file that cannot be written, exit 2;
nothing changed in either case.
"""

from __future__ import annotations

from typing import Annotated

import typer

from consentflow import rotation
from consentflow.actors import agent_actor
from consentflow.cli._common import JsonOpt, app, connect, emit, fmt_time

keys_app = typer.Typer(no_args_is_help=True, help="The instance keys: list and rotate.")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """Show the keys by fingerprint (newest first), which one signs, and the sealed values."""
    view = rotation.status(connect())

    def text() -> None:
        typer.echo(f"keys from the {view.source}" + (f" {view.key_file}" if view.key_file else ""))
        for key in view.keys:
            role = "signs and seals" if key.signs else "verifies and opens"
            typer.echo(f"  {key.fingerprint}  {role}" + ("  (reference)" if key.reference else ""))
        pinned = "pinned" if view.reference_pinned else "the one key"
        typer.echo(f"reference key {view.reference} ({pinned})")
        typer.echo(
            f"sealed values: {view.sealed_current} under the newest key, "
            f"{view.sealed_older} under older keys"
        )
        if view.unreadable:
            typer.echo(f"unreadable: {view.unreadable} (its key was removed)")
        if view.rotation_pending:
            typer.echo("a rotation is pending: run `consentflow keys rotate`")
        typer.echo(f"last rotated: {fmt_time(view.last_rotated_at)}")

    emit(view, as_json, text)


@keys_app.command("rotate")
def rotate_command(
    agent: Annotated[
        str | None, typer.Option(help="Who rotates, for the audit trail (default: OS user).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a new signing key (key file) or adopt a prepended one, and re-seal every secret."""
    actor = agent_actor(agent)
    view = rotation.rotate(connect(), actor)

    def text() -> None:
        if view.generated:
            typer.echo(f"new key {view.signing} written to {view.key_file}")
        else:
            typer.echo(f"finished the rotation to key {view.signing}")
        typer.echo(f"re-sealed {view.resealed} secret(s); keys now: {', '.join(view.keys)}")
        typer.echo(f"reference key {view.reference} (unchanged)")

    emit(view, as_json, text)

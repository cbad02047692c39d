"""``consentflow link``: a signed link for one person, for a support agent to send by another
channel (chat, phone, a letter).

Prints the link on one line (``--json``: the ``views.LinkOut``). The audit trail records the
agent (the OS user, or ``--agent``) and the action, never the link's token. A bad action, a
missing or superfluous purpose, an unknown subject or purpose: one line on stderr, exit 2, and
nothing recorded.
"""

from __future__ import annotations

from typing import Annotated

import typer

from consentflow import link_requests
from consentflow.actors import agent_actor
from consentflow.cli._common import JsonOpt, app, emit, fmt_time, session
from consentflow.views import LinkOut


@app.command("link")
def link_command(
    external_id: Annotated[str, typer.Argument(help="The subject's external id.")],
    action: Annotated[
        str,
        typer.Option(
            "--action", help="preferences, renew, revoke, grant or erase.", show_default=False
        ),
    ] = "preferences",
    purpose: Annotated[
        str | None,
        typer.Option(help="The purpose (renew and grant need one; revoke: all without one)."),
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Who issues it, for the audit trail (default: OS user).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a signed link for a subject (default: their preference page)."""
    parsed = link_requests.parse_action(action)
    with session() as s:
        issued = link_requests.issue_for(s, external_id, parsed, purpose, actor=agent_actor(agent))
    view = LinkOut.model_validate(issued)

    def text() -> None:
        typer.echo(view.url)
        typer.echo(f"(valid until {fmt_time(view.expires_at)})", err=True)

    emit(view, as_json, text)

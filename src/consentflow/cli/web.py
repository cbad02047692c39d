"""``consentflow serve`` (the web app) and ``consentflow token`` (API tokens)."""

from __future__ import annotations

import copy
from typing import Annotated, Any

import typer

from consentflow import db, timeutil, tokens, views
from consentflow.cli._common import JsonOpt, app, emit, session

token_app = typer.Typer(no_args_is_help=True, help="API tokens for the web app and its API.")
app.add_typer(token_app, name="token")

#: The scopes a token may have, as ``tokens.Scope`` lists them (``metrics``: a Prometheus scraper).
_SCOPES = ", ".join(s.value for s in tokens.Scope)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Run the web app: the API, the email-link pages and the dashboard.

    The access log never records link tokens, subject ids or query strings (see
    ``consentflow.web.logs``).
    """
    # Prefect sets up logging when it is first used (``prefect.main``), with a configuration
    # that resets uvicorn's loggers: do it before uvicorn sets up its own, or the first flow run
    # started through the API would silence the access log.
    import prefect.main  # noqa: F401
    import uvicorn

    db.ensure_schema(db.get_engine())
    typer.echo(f"consentflow serving on http://{host}:{port} (API under /api/v1)")
    # The app and its log filter are named, not imported: the CLI and the web app are two doors
    # side by side, and this is the same app an operator runs with
    # ``uvicorn consentflow.web.app:create_app --factory``.
    uvicorn.run(
        "consentflow.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        proxy_headers=True,
        log_level="info",
        log_config=_log_config(),
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with ``consentflow.web.logs.AccessLogRedactor`` on
    the access logger (``logging.config`` imports it by its dotted name)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_access"] = {
        "()": "consentflow.web.logs.AccessLogRedactor"
    }
    access = config["loggers"].setdefault("uvicorn.access", {})
    access["filters"] = [*access.get("filters", []), "redact_access"]
    return config


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. alice or crm-prod.")],
    scope: Annotated[str, typer.Option(help=f"One of: {_SCOPES}.", show_default=False)],
    system: Annotated[
        str | None, typer.Option(help="For --scope system: the system it acts for.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; it is printed once, now, and only its hash is kept."""
    with session() as s:
        info, token = tokens.create(s, name, scope, system=system)
    data = views.TokenCreated(name=info.name, scope=info.scope, system=info.system, token=token)

    def text() -> None:
        typer.echo(token)
        typer.echo(
            f"token {info.name!r} ({info.scope.value}"
            + (f", system {info.system}" if info.system else "")
            + "): store it now, it will not be shown again",
            err=True,
        )

    emit(data, as_json, text)


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Every token (never the tokens themselves): name, scope, system, last use, revocation."""
    with session() as s:
        rows = [views.TokenOut.model_validate(r) for r in tokens.list_all(s)]

    def text() -> None:
        for r in rows:
            state = "revoked" if r.revoked_at else "active"
            typer.echo(
                f"{r.name:<24} {r.scope:<11} {r.system or '-':<16} {state:<8} "
                f"last used {timeutil.display(r.last_used_at, 'never')}"
            )

    emit(rows, as_json, text)


@token_app.command("revoke")
def token_revoke(name: str, as_json: JsonOpt = False) -> None:
    """Revoke the active token NAME (its sign-in sessions end at once)."""
    with session() as s:
        n = tokens.revoke(s, name)
    emit(
        views.TokenRevoked(name=name, revoked=n),
        as_json,
        lambda: typer.echo(f"token {name!r} revoked"),
    )

"""``consentflow run FLOW``: start a lifecycle flow from the terminal, recorded like any other run.

Flows are found by convention (``flows.load``), so adding a flow needs no change here:
``consentflow run expiry-sweep`` builds ``flows.expiry_sweep.Params`` from the options and calls
``expiry_sweep(params)``, which returns a ``consentflow.runs.RunSummary``.
With ``PREFECT_API_URL`` set the run is reported to that server; otherwise Prefect runs embedded.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from consentflow.cli._common import app, emit, parse_time
from consentflow.errors import InvalidInput


def _hermetic_prefect() -> None:
    """Quiet, local defaults for an embedded run (each can still be overridden by the caller)."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _param_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_values(fields: Any, options: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """The flow's parameters from the CLI options; an option the flow does not take is refused."""
    values: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in fields:
            raise InvalidInput(f"this flow takes no --{key.replace('_', '-')}")
        values[key] = value
    for item in extra:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            known = ", ".join(sorted(fields))
            raise InvalidInput(f"bad --param {item!r}: use KEY=VALUE with KEY one of {known}")
        values[key] = _param_value(raw)
    return values


@app.command("run")
def run_flow(
    flow: Annotated[str, typer.Argument(help="Which flow: see `consentflow run --help`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; change nothing.")
    ] = False,
    as_of: Annotated[str | None, typer.Option(help="Judge due items as of this instant.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Items per batch (one task each).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many items.")] = None,
    purposes: Annotated[
        str | None, typer.Option(help="Only these purposes (comma-separated).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Any other parameter, KEY=VALUE.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's counts as JSON.")
    ] = False,
) -> None:
    """Run a lifecycle flow now (expiry-sweep, renewal-reminders, ...), audited like any run."""
    _hermetic_prefect()
    import flows

    _, params_model = flows.load(flow)
    options = {
        "dry_run": dry_run or None,
        "as_of": parse_time(as_of, "--as-of"),
        "batch_size": batch_size,
        "limit": limit,
        "purposes": [p.strip() for p in purposes.split(",") if p.strip()] if purposes else None,
    }
    values = build_values(params_model.model_fields, options, param or [])
    flow_fn, params = flows.prepare(flow, values)
    summary = flow_fn(params)

    def text() -> None:
        label = " (dry run)" if summary.dry_run else ""
        typer.echo(f"{flow}{label}: {summary.outcome}, run {summary.run_id}")
        for row in summary.rows():
            typer.echo(f"  {row['purpose']:<24} {row['outcome']:<20} {row['count']:>8}")
        if not summary.rows():
            typer.echo("  nothing to do")

    emit(summary.as_dict(), as_json, text)

"""``consentflow run FLOW``: start a flow from the terminal, recorded like any other run.

Flows are found by name through their entry points (``consentflow.runs.load_flow``), so adding a
flow needs no change here: the options become the flow's top-level parameters, checked against
the model derived from its signature (an option the flow does not take is refused) and the
flow's own rules (``runs.prepare_flow``) before anything starts (exit 2, one line).

Where it runs: with a Prefect server configured (``PREFECT_API_URL``), on a worker: a run of the
flow's deployment (``runs.start_deployment_run``; ``--deployment NAME`` when the flow has
several), tagged ``requested-by:cli:USER`` and audited ``flow.requested`` when created; the
command prints the run id and its UI link and returns, or with ``--watch`` waits for the final
state and prints the summary the run recorded (exit 1 unless it completed). ``--local``, or no
Prefect server, runs the flow in this process as before (tagged the same way).

Which Prefect: the server named by ``PREFECT_API_URL``, or the profile chosen explicitly with
``PREFECT_PROFILE``, ``PREFECT_HOME`` or ``PREFECT_PROFILES_PATH``; otherwise an embedded Prefect
in a throw-away ``PREFECT_HOME``, so that a default profile pointing at some server (``prefect
config set PREFECT_API_URL=...`` writes one into ``~/.prefect/profiles.toml``) never captures a
run started here (see ``_hermetic_prefect``). That embedded server is started as soon as the run
is known to be local, while the flow is imported, from a database prepared once per Prefect
version (``cli._embedded``: start-up in seconds, not Prefect's migrations on every run).

A run that fails ends in one line on stderr and exit status 1 (its summary, outcome ``failed``,
is still printed on stdout); Prefect's own log records, which carry the tracebacks, stay off the
terminal unless ``PREFECT_LOGGING_LEVEL`` is set.
"""

from __future__ import annotations

import atexit
import gc
import getpass
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import col, select

from consentflow import db
from consentflow.cli import _embedded
from consentflow.cli._common import app, emit, parse_time
from consentflow.errors import ConsentflowError, InvalidInput
from consentflow.models import AuditEntry

#: Any of these in the environment is an explicit choice of Prefect home, profile or server.
EXPLICIT_PREFECT = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE")


def _hermetic_prefect() -> Path | None:
    """Prefect settings for a run started from the CLI, as environment defaults (each can be
    overridden by setting it). Call before Prefect is imported. Returns the temporary
    ``PREFECT_HOME`` it made, if it made one (see below).

    * Without ``PREFECT_API_URL``: no telemetry, no log shipping to the embedded API (nobody reads
      it), and, unless a Prefect home or profile is chosen explicitly (``EXPLICIT_PREFECT``), a
      temporary ``PREFECT_HOME``, removed at exit: Prefect reads its profiles from
      ``$PREFECT_HOME/profiles.toml`` (after ``PREFECT_PROFILES_PATH``, and a ``profiles_path``
      in ``./.env``, ``./prefect.toml`` or ``./pyproject.toml``), so the default profile in
      ``~/.prefect`` is never consulted.
    * Unless ``PREFECT_LOGGING_LEVEL`` is set: other libraries' log records (the root logger),
      and the embedded server's (a subprocess: ``cli._embedded`` keeps its output in the
      temporary home, Prefect's own would write to our stderr), only at CRITICAL;
      ``_quiet_prefect_logs`` does the rest once Prefect is imported.
    """
    if "prefect" in sys.modules:
        return None  # too late: Prefect read its settings on import (the test suite sets its own)
    env = os.environ
    made: Path | None = None
    if not env.get("PREFECT_API_URL"):
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
        env.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
        if not any(env.get(key) for key in EXPLICIT_PREFECT):
            home = tempfile.mkdtemp(prefix="consentflow-prefect-")
            # Registered before Prefect starts its embedded server, so it runs after the
            # server's own atexit hook has stopped it (atexit runs last-in, first-out).
            atexit.register(shutil.rmtree, home, ignore_errors=True)
            env["PREFECT_HOME"] = home
            made = Path(home)
    if not env.get("PREFECT_LOGGING_LEVEL"):
        env.setdefault("PREFECT_LOGGING_ROOT_LEVEL", "CRITICAL")
        if not env.get("PREFECT_API_URL"):
            env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    return made


#: What Prefect imports only once a flow starts (its engines, the flow-call tracker, FastAPI's
#: encoder for the parameters): imported with the flow, while the embedded server starts and
#: the command would only wait, rather than after the server answers (~0.3 s).
ENGINE_MODULES = (
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.utilities.visualization",
    "fastapi.encoders",
)


def _preload_engine() -> None:
    for name in ENGINE_MODULES:
        with suppress(ImportError):  # a later Prefect may have moved one: then it loads late
            importlib.import_module(name)


_frozen_at_exit: list[bool] = []


def _freeze_at_exit() -> None:
    """Make ``gc.freeze()`` the last thing done at exit (registered before anything else of the
    run, and atexit runs last-in, first-out): the interpreter's final garbage collection then
    skips everything Prefect and the flow imported, which otherwise costs ~0.5 CPU-s after the
    summary is printed (2 s on a busy 2-core machine). Once per process."""
    if not _frozen_at_exit:
        _frozen_at_exit.append(True)
        atexit.register(gc.freeze)


@contextmanager
def _imports_without_gc() -> Iterator[None]:
    """Import Prefect and the flow with the garbage collector off, then freeze what they made
    (``gc.freeze``: modules and classes live as long as the process; later collections need
    not scan them): ~14 % less CPU to start. Only in a process that has not imported Prefect
    yet (a CLI process, not the test suite, whose heap it would freeze)."""
    if "prefect" in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"consentflow: {record.levelname.lower()}: {record.getMessage()}"


def _quiet_prefect_logs() -> None:
    """Keep Prefect's log records off the terminal (a failed task logs its traceback at ERROR,
    then the flow does again); they still reach the Prefect API when a server is used.
    consentflow's own warnings (``consentflow.*`` loggers) still show, one line each like our
    errors. Does nothing when ``PREFECT_LOGGING_LEVEL`` is set: then Prefect logs as configured.
    Call once Prefect is imported (importing it configures logging)."""
    if os.environ.get("PREFECT_LOGGING_LEVEL"):
        return
    prefect_log = logging.getLogger("prefect")
    prefect_log.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in prefect_log.handlers):
        prefect_log.addHandler(logging.NullHandler())  # no "last resort" printing either
    ours = logging.getLogger("consentflow")
    if not any(isinstance(h.formatter, _OneLine) for h in ours.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_OneLine())
        ours.addHandler(handler)
        ours.setLevel(logging.WARNING)
        ours.propagate = False


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
def run_flow(  # Long: one typed option per line is what --help reads
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
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Run in this process even when a Prefect server is configured."
        ),
    ] = False,
    deployment: Annotated[
        str | None,
        typer.Option(help="Which of the flow's deployments runs it (default: its only one)."),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Wait for the worker's run to end and print its summary."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's counts as JSON.")
    ] = False,
) -> None:
    """Run a flow now (expiry-sweep, renewal-reminders, ...): on a worker when a Prefect server
    is configured (PREFECT_API_URL), else (or with --local) in this process; audited either way."""
    _freeze_at_exit()
    # The variable itself, not Prefect's settings: a profile, a test harness or an embedded
    # server gives Prefect an API too, but only PREFECT_API_URL says "runs go to the workers".
    on_worker = not local and (deployment is not None or bool(os.environ.get("PREFECT_API_URL")))
    if local and (deployment or watch):
        raise InvalidInput("--deployment and --watch are for a run on a worker, not --local")
    if not on_worker and watch:
        raise InvalidInput("--watch needs a Prefect server (PREFECT_API_URL): a local run waits")
    home = _hermetic_prefect()
    from consentflow import runs  # finds flows by name without importing Prefect

    if home is not None and not on_worker and flow in runs.flow_names():
        _embedded.start(home)  # starts while the flow is imported and its parameters checked
    with _imports_without_gc():
        _, params_model = runs.load_flow(flow)
        if not on_worker:
            _preload_engine()
    _quiet_prefect_logs()
    options = {
        "dry_run": dry_run or None,
        "as_of": parse_time(as_of, "--as-of"),
        "batch_size": batch_size,
        "limit": limit,
        "purposes": [p.strip() for p in purposes.split(",") if p.strip()] if purposes else None,
    }
    values = build_values(params_model.model_fields, options, param or [])
    db.ensure_schema(db.get_engine())  # before a run starts, not as its failure
    if on_worker:
        _on_worker(flow, values, deployment, watch, as_json)
    else:
        _in_process(flow, values, as_json)


def requester() -> str:
    """Who asks from this terminal: ``cli:USER`` (the operating-system account)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no account name (a container without a passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def _on_worker(
    flow: str, values: dict[str, Any], deployment: str | None, watch: bool, as_json: bool
) -> None:
    """A deployment run: created, printed; with ``watch``, followed to its end."""
    from consentflow import runs

    started = runs.start_deployment_run(flow, values, requester(), deployment)
    if not watch:
        data = started.as_dict()
        emit(data, as_json, lambda: _print_started(started))
        return
    if not as_json:
        _print_started(started)
    state = _wait(started.run_id)
    summary = recorded_summary(started.run_id)
    if summary is not None:
        emit(summary, as_json, lambda: _print(flow, summary))
    if state.type.value != "COMPLETED":
        where = (
            f"recorded as {summary['outcome']} in the audit trail"
            if summary is not None
            else "left no entry in the audit trail"
        )
        reason = f": {failure_line(state.message)}" if state.message else ""
        raise ConsentflowError(f"{flow} run {started.run_id} ended {state.name}{reason}; {where}")


def _print_started(started: Any) -> None:
    typer.echo(
        f"{started.flow}: run {started.run_id} created on {started.deployment} "
        f"({started.state}), requested by {started.requested_by}"
    )
    if started.ui_url:
        typer.echo(f"  {started.ui_url}")


#: How often ``--watch`` asks the Prefect server about the run.
WATCH_POLL_SECONDS = 2.0


def _wait(run_id: str) -> Any:
    """The run's final state, asking the Prefect server every ``WATCH_POLL_SECONDS``."""
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.is_final():
                return state
            time.sleep(WATCH_POLL_SECONDS)


def _in_process(flow: str, values: dict[str, Any], as_json: bool) -> None:
    """Run the flow here, reporting to the configured or an embedded Prefect."""
    from prefect import tags

    from consentflow import runs

    flow_fn, parameters = runs.prepare_flow(flow, values)
    _embedded.ready()
    try:
        with tags(f"{runs.REQUESTED_BY_TAG}{requester()}"):
            state = flow_fn(**parameters, return_state=True)
    except Exception as exc:  # Prefect itself failed (say, its embedded server did not start)
        raise ConsentflowError(f"{flow} failed: {failure_reason(exc)}") from None
    if state.is_completed():
        summary = state.result().as_dict()
        emit(summary, as_json, lambda: _print(flow, summary))
        return
    run_id = str(state.state_details.flow_run_id or "") or None
    summary = recorded_summary(run_id)
    if summary is not None:
        emit(summary, as_json, lambda: _print(flow, summary))
    outcome = state.result(raise_on_failure=False)
    reason = (
        failure_reason(outcome)
        if isinstance(outcome, BaseException)
        else state.message or state.name
    )
    if summary is not None:
        where = f"; run {run_id} recorded as {summary['outcome']} in the audit trail"
    elif run_id:
        where = f"; run {run_id} left no entry in the audit trail"
    else:
        where = ""
    raise ConsentflowError(f"{flow} failed: {reason}{where}")


def failure_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:500] if lines else ""


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(purpose, outcome, count) rows of a run's summary; for ``propagate``, which counts per
    endpoint rather than per purpose, (endpoint, outcome, count)."""
    if summary.get("endpoints"):
        return [
            (row["endpoint"], outcome, n)
            for row in summary["endpoints"]
            for outcome, n in row.items()
            if outcome != "endpoint" and n
        ]
    return [(row["purpose"], row["outcome"], row["count"]) for row in summary["counts"]]


def _print(flow: str, summary: dict[str, Any]) -> None:
    label = " (dry run)" if summary["dry_run"] else ""
    typer.echo(f"{flow}{label}: {summary['outcome']}, run {summary['run_id']}")
    rows = summary_rows(summary)
    for name, outcome, n in rows:
        typer.echo(f"  {name:<24} {outcome:<20} {n:>8}")
    if not rows:
        typer.echo("  nothing to do")


def failure_reason(exc: BaseException) -> str:
    """One line about why a run failed: our own errors say it themselves; others are named."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = f"database error: {exc.orig}"
    elif type(exc).__module__.startswith("consentflow"):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__


def recorded_summary(run_id: str | None) -> dict[str, Any] | None:
    """The summary a run recorded in the audit trail (``flow.run`` or ``flow.dry_run``), if any."""
    if run_id is None:
        return None
    try:
        with db.session_scope(readonly=True) as session:
            entry = session.exec(
                select(AuditEntry)
                .where(
                    AuditEntry.run_id == run_id,
                    col(AuditEntry.action).in_(("flow.run", "flow.dry_run")),
                )
                .order_by(col(AuditEntry.seq).desc())
            ).first()
            return dict(entry.detail) if entry is not None else None
    except SQLAlchemyError:  # the database that failed the run may fail this too
        return None

"""The embedded Prefect server of ``consentflow run`` when no Prefect server is configured.

Prefect runs a flow only against an API; without ``PREFECT_API_URL`` it starts a temporary
server of its own when the flow begins (``SubprocessASGIServer``) and migrates a new database
for it: 8-30 s before the first batch on a 2-core machine. ``consentflow run`` instead:

* starts the same server command Prefect would (``uvicorn --factory
  prefect.server.api.server:create_app``, ephemeral, no UI) as soon as it knows the run is
  local (``start``), before Prefect and the flows are imported, so the server starts while
  this process imports, loads the flow and checks its parameters (two cores: in parallel);
* gives it a copy of a **prepared database**: the embedded server's SQLite database as it was
  right after its migrations and block registration, kept once per Prefect version in
  ``<data dir>/prefect/server-<version>.db`` (``template_path``), so later runs neither migrate
  nor register blocks (``PREFECT_SERVER_DATABASE_MIGRATE_ON_START`` and
  ``PREFECT_SERVER_REGISTER_BLOCKS_ON_START`` false), and turns off the services a one-shot
  run does not need: automations (``PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED``) and the event
  store (``PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED``; nobody reads a temporary server's
  events). Each is only a default: a variable set in the environment wins;
* points this process's Prefect at it (``PREFECT_API_URL`` in this process only, set before
  Prefect is imported; ``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED`` false: that server asks for no
  token) and waits for its ``/api/health`` just before the flow starts (``ready``), which also
  saves the prepared database if there was none (``save_template``). The command imports
  Prefect's flow engine while it waits (``cli.run.ENGINE_MODULES``).

Invariants: each run has its own server, port and database (a copy, in the run's temporary
``PREFECT_HOME``), so two runs at once share nothing but the prepared database, which is only
ever read (copied) or replaced whole (written to a temporary file, then ``os.replace``): a
reader sees the old file or the new one, never half of one. The server is stopped and the
temporary home removed at exit (``atexit``, in that order); nothing else is left behind.

Failure modes: a prepared database that cannot be read (not SQLite, no ``alembic_version``) is
ignored and replaced by the next one made; one that cannot be written (a read-only data
directory) is skipped, and each run then prepares its own database as before, slower. A
server that exits or does not answer within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
(default 90) fails the command in one line naming the end of the server's log. Nothing here
applies when a Prefect home, profile or server is chosen explicitly, when the server's database
is (``PREFECT_SERVER_DATABASE_CONNECTION_URL``: then only the early start), or when
``PREFECT_SERVER_EPHEMERAL_ENABLED`` is false (Prefect then refuses to run, as documented).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing, suppress
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from consentflow import keys
from consentflow.errors import ConsentflowError

#: Where the server's database is when it is not the default ``$PREFECT_HOME/prefect.db``.
DATABASE_URL_VARIABLES = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)

#: What Prefect's own temporary server sets (``SubprocessASGIServer``): no UI, ephemeral.
_SERVER_FLAGS = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}

#: The server process: Prefect's server modules imported with the garbage collector off and
#: then frozen (``gc.freeze``: long-lived, never worth scanning again; ~12 % less CPU to start),
#: then ``python -m uvicorn ARGS`` (``uvicorn.main``), the command Prefect itself runs.
_BOOT = (
    "import gc, sys; gc.disable(); import prefect.server.api.server; gc.freeze(); gc.enable(); "
    "import uvicorn; sys.argv[0] = 'uvicorn'; uvicorn.main()"
)

#: Services a one-shot run's server does without (defaults: the environment wins).
_ONE_SHOT = {
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
}

#: With a prepared database: no migrations, no block registration (both done in it already).
_PREPARED = {
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
}


@dataclass
class Server:
    """The embedded server of this process."""

    process: subprocess.Popen[bytes]
    port: int
    database: Path | None  # None: a database chosen by the environment
    prepared: bool  # started from the prepared database
    log: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


_server: Server | None = None


def template_path() -> Path:
    """The prepared database of this Prefect version and its set of migrations (a development
    install may change them without changing its version)."""
    spec = find_spec("prefect")
    names = ""
    if spec is not None and spec.origin:
        migrations = Path(spec.origin).parent / "server" / "database" / "_migrations"
        with suppress(OSError):
            names = ",".join(sorted(p.name for p in (migrations / "versions" / "sqlite").iterdir()))
    digest = hashlib.sha256(names.encode()).hexdigest()[:12]
    return keys.data_dir() / "prefect" / f"server-{version('prefect')}-{digest}.db"


def _ephemeral_allowed() -> bool:
    for name in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        if os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off"):
            return False
    return True


def usable(template: Path) -> bool:
    """Whether ``template`` is a SQLite database stamped by Prefect's migrations."""
    if not template.is_file():
        return False
    try:
        # immutable: read without locks and without creating -wal/-shm files beside it
        with closing(
            sqlite3.connect(f"{template.absolute().as_uri()}?immutable=1", uri=True)
        ) as conn:
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    except sqlite3.Error:
        return False


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(home: Path) -> None:
    """Start the embedded server for a run in this process, with ``home`` as its (temporary)
    ``PREFECT_HOME``. Call before Prefect is imported; does nothing if it is, or if ephemeral
    servers are turned off."""
    global _server
    if _server is not None or "prefect" in sys.modules or not _ephemeral_allowed():
        return
    env = dict(os.environ)
    chosen_database = any(env.get(name) for name in DATABASE_URL_VARIABLES)
    database = None if chosen_database else home / "prefect.db"
    prepared = False
    if database is not None:
        with suppress(OSError, ConsentflowError):
            template = template_path()
            if usable(template):
                database.write_bytes(template.read_bytes())
                prepared = True
    for name, value in {**_ONE_SHOT, **(_PREPARED if prepared else {})}.items():
        legacy = name.replace("PREFECT_SERVER_", "PREFECT_API_", 1)  # Prefect's older names
        if legacy == "PREFECT_API_REGISTER_BLOCKS_ON_START":
            legacy = "PREFECT_API_BLOCKS_REGISTER_ON_START"
        if name not in env and legacy not in env:
            env[name] = value
    env.update(_SERVER_FLAGS)
    env["PREFECT_HOME"] = str(home)
    port = _free_port()
    log = home / "server.log"
    command = [sys.executable, "-c", _BOOT, "--factory", "prefect.server.api.server:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    # Its output in the temporary home (the tail names why it failed), or on our stderr when
    # Prefect's logs were asked for (PREFECT_LOGGING_LEVEL), as before.
    shown = bool(os.environ.get("PREFECT_LOGGING_LEVEL"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=None if shown else out,
            stderr=None if shown else subprocess.STDOUT,
        )
    _server = Server(process, port, database, prepared, log)
    # After the temporary home's removal was registered: atexit runs last-in, first-out.
    atexit.register(stop)
    os.environ["PREFECT_API_URL"] = _server.api_url
    # The embedded server has no CSRF protection: no token request before the first change.
    os.environ.setdefault("PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", "false")


def _startup_timeout() -> float:
    raw = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "")
    try:
        return float(raw) if raw else 90.0
    except ValueError:
        return 90.0


def ready() -> None:
    """Wait until the embedded server answers (nothing to do without one); then, if it was
    not started from a prepared database, keep its database as the prepared one.
    ``ConsentflowError`` in one line if it exits or does not answer in time."""
    server = _server
    if server is None:
        return
    deadline = time.monotonic() + _startup_timeout()
    while True:
        if server.process.poll() is not None:
            raise _failed(server, "exited")
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise _failed(server, "did not answer in time")
        time.sleep(0.05)
    if server.database is not None and not server.prepared:
        with suppress(OSError, sqlite3.Error, ConsentflowError):
            save_template(server.database, template_path())
            server.prepared = True


def save_template(database: Path, template: Path) -> None:
    """Copy the server's ``database`` (consistent even while the server runs: SQLite's backup)
    to ``template``, replacing it whole; other Prefect versions' prepared databases go."""
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
    try:
        with (
            closing(sqlite3.connect(database)) as source,
            closing(sqlite3.connect(partial)) as target,
        ):
            source.backup(target)
            # One self-contained file (the server's is in WAL mode; its copy sets that again).
            target.execute("PRAGMA journal_mode=DELETE")
        os.replace(partial, template)
    finally:
        partial.unlink(missing_ok=True)
    for other in template.parent.glob("server-*.db"):
        if other != template:
            other.unlink(missing_ok=True)


def _failed(server: Server, what: str) -> ConsentflowError:
    """The one-line error of a server that did not start. A prepared database it started from
    is removed, so the next run prepares a new one rather than failing the same way."""
    again = ""
    if server.prepared:
        with suppress(OSError, ConsentflowError):
            template_path().unlink(missing_ok=True)
            again = " (its prepared database was removed: the next run prepares a new one)"
    return ConsentflowError(f"the embedded Prefect server {what}{again}: {_log_tail(server)}")


def _log_tail(server: Server, lines: int = 3) -> str:
    try:
        text = server.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        text = []
    tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
    if tail:
        return tail
    status = server.process.poll()
    what = f"exit status {status}" if status is not None else "no answer"
    return f"{what}; set PREFECT_LOGGING_LEVEL=DEBUG to see its log"


def stop() -> None:
    """Stop the embedded server (at exit): SIGTERM, then SIGKILL after 5 s."""
    global _server
    server, _server = _server, None
    if server is None or server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()

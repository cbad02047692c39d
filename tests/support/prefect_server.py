"""A real ``prefect server start`` for the tests that need what the test harness lacks: ``prefect
deploy``, work pools, workers, automations and triggers acting on real events.

``PrefectServer`` starts the server as a subprocess in its own process group, with a Prefect home
of its own (its SQLite database lives there), on a free loopback port, without the UI; it is ready
when ``/api/health`` answers 200 (``start`` fails with the server's last log lines if it exits or
does not answer within ``STARTUP_SECONDS``). ``stop`` ends the group: SIGTERM, then SIGKILL.
Its log is ``<home>/server.log``.

A pytest plugin (registered in ``tests/conftest.py``): the session fixture ``prefect_server``
yields one running ``PrefectServer``; ``server.api_url`` is its API, and ``server.client_env()``
the environment a client subprocess (``consentflow deploy``, ``prefect worker start``) needs: the
server's URL and a Prefect home of its own, none of the test session's settings. In this process,
``server.settings()`` is a context in which Prefect's client talks to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port

#: How long a server may take to answer ``/api/health`` (a new database, a busy machine).
STARTUP_SECONDS = 180.0

#: Variables of the test session's own Prefect that a server or client subprocess must not see.
_SESSION_PREFECT = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")


class PrefectServer:
    """One ``prefect server start`` subprocess with a home of its own under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "server-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def base_env(self, home: Path) -> dict[str, str]:
        """The environment of a Prefect process with ``home``: quiet, no telemetry."""
        env = {k: v for k, v in os.environ.items() if k not in _SESSION_PREFECT}
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_CLI_COLORS="false",
        )
        return env

    def client_env(self, home: Path | None = None) -> dict[str, str]:
        """The environment of a client subprocess: this server's URL, a home of its own."""
        home = home or self.root / "client-home"
        home.mkdir(parents=True, exist_ok=True)
        env = self.base_env(home)
        env.update(PREFECT_API_URL=self.api_url, PREFECT_SERVER_EPHEMERAL_ENABLED="false")
        return env

    def start(self) -> PrefectServer:
        env = self.base_env(self.home)
        env.update(PREFECT_UI_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
        command = [sys.executable, "-m", "prefect", "server", "start", "--no-ui"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)  # polling a starting process: nothing to wait on but the port
        self.stop()
        raise RuntimeError(f"prefect server not healthy in {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End the server's process group: SIGTERM, and SIGKILL after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        finally:
            with suppress(ProcessLookupError):  # anything it started and left in its group
                os.killpg(group, signal.SIGKILL)

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Prefect's client in this process talks to this server inside the block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the session (SQLite in its own home), stopped at the end."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server")).start()
    try:
        yield server
    finally:
        server.stop()

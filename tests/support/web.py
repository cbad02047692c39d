"""Helpers for the web tests: seeded data, tokens, an in-process client, real uvicorn servers
(in a thread, or ``consentflow serve`` in a subprocess)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from consentflow import db, purposes, settings, subjects, systems, tokens
from tests.support.net import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@dataclass
class Tokens:
    admin: str
    compliance: str
    support: str
    system: str  # for system "crm"
    other_system: str  # for system "billing"

    def by_scope(self, scope: str) -> str:
        return {
            "admin": self.admin,
            "compliance": self.compliance,
            "support": self.support,
            "system": self.system,
        }[scope]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def seed(engine: Engine) -> Tokens:
    """Two purposes, two subjects, two systems (crm: news; billing: invoices), one token each."""
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="Monthly newsletter", validity_days=365)
        purposes.add(
            s, "invoices", title="Invoices by email", validity_days=30, description="Your bills"
        )
        subjects.add(s, "alice", email="alice@example.com")
        subjects.add(s, "bob")
        systems.add(s, "crm", ["news"], webhook_url="https://crm.example.com/hooks")
        systems.add(s, "billing", ["invoices"])
    with db.session_scope(engine) as s:
        made = {
            "admin": tokens.create(s, "root", "admin")[1],
            "compliance": tokens.create(s, "carol", "compliance")[1],
            "support": tokens.create(s, "sam", "support")[1],
            "system": tokens.create(s, "crm-token", "system", system="crm")[1],
            "other_system": tokens.create(s, "billing-token", "system", system="billing")[1],
        }
    return Tokens(**made)


def client() -> TestClient:
    """The ASGI app in-process, on the database the ``engine`` fixture set as the default."""
    from consentflow.web.app import create_app

    return TestClient(create_app(), follow_redirects=False)


@contextlib.contextmanager
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on a real uvicorn server whose public URL (the base of the links in emails and
    pages) is the server itself; the settings are read afresh on entry and on exit. Yields its
    base URL. Set any other ``CONSENTFLOW_*`` variable before entering."""
    port = free_port()
    monkeypatch.setenv("CONSENTFLOW_PUBLIC_URL", f"http://127.0.0.1:{port}")
    settings.get_settings.cache_clear()
    try:
        with uvicorn_server(port=port) as base:
            yield base
    finally:
        settings.get_settings.cache_clear()


@contextlib.contextmanager
def uvicorn_server(port: int | None = None, timeout: float = 20.0) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread; yields its base URL once it is healthy."""
    import uvicorn

    from consentflow.web.app import create_app

    port = port or free_port()
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the uvicorn server did not become healthy")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Served:
    """``consentflow serve`` running in a subprocess: its base URL, and its output once done."""

    base: str
    proc: subprocess.Popen[bytes]
    stdout: str = ""
    stderr: str = ""


@contextlib.contextmanager
def serve_process(database_url: str, timeout: float = 60.0, **env: str) -> Iterator[Served]:
    """``consentflow serve`` as an operator runs it, on the test database, ready when uvicorn
    says so on stderr. Its stdout (the access log) and stderr are in the ``Served`` after the
    block, once the server has shut down."""
    port = free_port()
    exe = Path(sys.executable).with_name("consentflow")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "CONSENTFLOW_DATABASE_URL": database_url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(timeout, proc.kill)  # a server that never starts: stop waiting
    watchdog.start()
    served = Served(f"http://127.0.0.1:{port}", proc)
    startup: list[bytes] = []
    try:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            startup.append(line)
            if b"Application startup complete" in line:
                break
        else:
            raise RuntimeError("consentflow serve did not start:\n" + b"".join(startup).decode())
        watchdog.cancel()
        yield served
    finally:
        watchdog.cancel()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        served.stdout = out.decode()
        served.stderr = b"".join(startup).decode() + err.decode()


def list_page(c: Any, cohort: str, token: str, **params: Any) -> Any:
    """One page of a workspace list through the API (``GET /api/v1/lists/{cohort}``)."""
    r = c.get(f"/api/v1/lists/{cohort}", params=params, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def every_row(c: Any, cohort: str, token: str, limit: int = 3, **params: Any) -> list[Any]:
    """Every row of a workspace list, a page of ``limit`` at a time, following ``next``."""
    rows: list[Any] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        out = list_page(c, cohort, token, limit=limit, **params, **extra)
        rows += out["rows"]
        cursor = out["next"]
        if cursor is None:
            return rows
        assert len(out["rows"]) == limit

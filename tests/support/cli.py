"""The ``cli`` fixture: run ``consentflow ARGS...`` in-process against the test database; and
``fresh_machine``/``left_behind``, for a CLI run in a subprocess as a new user runs it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``consentflow ARGS...`` in-process against the test database."""
    from consentflow.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def fresh_machine(root: Path) -> dict[str, str]:
    """The environment of a new user's shell: no consentflow or Prefect settings, a home of its
    own (``root/home``) whose default Prefect profile points at a server that is not there (it
    must be ignored: only PREFECT_API_URL or an explicitly chosen home or profile may send runs
    elsewhere), and a temporary directory of its own (``root/tmp``: to see that the throw-away
    Prefect home is removed)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSENTFLOW_", "PREFECT_")) and k != "DO_NOT_TRACK"
    }
    home = root / "home"
    (home / ".prefect").mkdir(parents=True)
    (home / ".prefect" / "profiles.toml").write_text(
        'active = "elsewhere"\n[profiles.elsewhere]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    )
    (root / "tmp").mkdir()
    env.update(HOME=str(home), TMPDIR=str(root / "tmp"))
    return env


def left_behind(root: Path) -> list[str]:
    """What a CLI process run with ``fresh_machine(root)`` left in its home's Prefect directory
    and its temporary directory."""
    prefect_home = sorted(p.name for p in (root / "home" / ".prefect").iterdir())
    return [n for n in prefect_home if n != "profiles.toml"] + sorted(
        p.name for p in (root / "tmp").iterdir()
    )

"""The ``cli`` fixture: run ``consentflow ARGS...`` in-process against the test database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

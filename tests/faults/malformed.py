"""Malformed input on every entry point (CLI, import, API, link pages): each is one clear 4xx
or exit 2, and the database is exactly as it was (every table's rows, every consent and request,
the audit chain's head)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import text

from tests.support.seeding import row_counts

if TYPE_CHECKING:
    from tests.faults.scenario import Scenario


def snapshot(sc: Scenario) -> Any:
    with sc.engine.connect() as conn:
        head = conn.execute(text("SELECT seq, hash FROM audit_head")).one()
    return row_counts(sc.engine), tuple(head)


def cli(*args: str) -> tuple[int, str]:
    """``consentflow ARGS`` in this process: its exit code and everything it wrote."""
    from consentflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def _cli_cases(sc: Scenario) -> list[tuple[str, tuple[str, ...]]]:
    bad_csv = Path(sc.logs) / "bad-import.csv"
    bad_csv.write_bytes(
        b"external_id,email,locale,purpose,state,given_at,valid_until\n"
        b"x1,x1@example.org,en,news,given,,\n"
        b"x2,x2@example.org,en,news,giv\x00en,,\n"
        b"x/3,x3@example.org," + b"l" * 60 + b",news,given,,\n"
    )
    return [
        ("cli: id with a slash", ("consent", "revoke", "s1/x", "news")),
        ("cli: over-long reason", ("consent", "revoke", "s1", "news", "--reason", "r" * 900)),
        (
            "cli: malformed IPv6 webhook URL",
            ("system", "add", "bad", "--purposes", "news", "--webhook-url", "https://[::1"),
        ),
        ("cli: run with a bad as-of", ("run", "expiry-sweep", "--local", "--as-of", "yesterday")),
        (
            "cli: run with an unknown parameter",
            ("run", "propagate", "--local", "--param", "dryrun=true"),
        ),
        ("import: NUL byte, bad id, long locale", ("subject", "import", str(bad_csv))),
    ]


def _api_cases(sc: Scenario) -> list[tuple[str, Any]]:
    base = f"{sc.web}/api/v1"
    auth = {"Authorization": f"Bearer {sc.admin_token}"}
    token = sc.link("s2", _grant())
    return [
        (
            "api: encoded slash in a subject id",
            lambda: httpx.post(f"{base}/subjects/s1%2Fx/consents/news/revoke", headers=auth),
        ),
        (
            "api: channel only a link may use",
            lambda: httpx.post(
                f"{base}/subjects/s1/consents/news/revoke",
                headers=auth,
                json={"channel": "email_link"},
            ),
        ),
        (
            "api: unknown run parameter",
            lambda: httpx.post(f"{base}/runs/expiry-sweep", headers=auth, json={"dryrun": True}),
        ),
        (
            "api: 3 MB body without a token",
            lambda: httpx.post(
                f"{base}/subjects",
                content=b"{" + b" " * 3_000_000 + b"}",
                headers={"content-type": "application/json"},
            ),
        ),
        ("api: not JSON", lambda: httpx.post(f"{base}/subjects", headers=auth, content=b"\xff{")),
        ("link: tampered token", lambda: httpx.get(f"{sc.web}/l/{token[:-2]}xx")),
        ("link: garbage token", lambda: httpx.post(f"{sc.web}/l/%00%ff..", data={"op": "x"})),
        (
            "link: one-click on a grant link",
            lambda: httpx.post(f"{sc.web}/l/{token}", data={"List-Unsubscribe": "One-Click"}),
        ),
        (
            "link: confirm without CSRF",
            lambda: httpx.post(f"{sc.web}/l/{token}", data={"answer": "yes"}),
        ),
    ]


def _grant() -> Any:
    from consentflow.links import LinkAction

    return LinkAction.GRANT


def every_entry_point(sc: Scenario) -> None:
    """Each case: a clear refusal, nothing changed. Failures are collected, then reported."""
    failures: list[str] = []
    before = snapshot(sc)
    for name, args in _cli_cases(sc):
        code, output = cli(*args)
        lines = [line for line in output.strip().splitlines() if line.strip()]
        if code != 2 or "Traceback" in output or len(lines) > 3:
            failures.append(f"{name}: exit {code}, output {output[-300:]!r}")
    for name, call in _api_cases(sc):
        response = call()
        if not 400 <= response.status_code < 500:
            failures.append(f"{name}: HTTP {response.status_code} {response.text[:200]!r}")
    after = snapshot(sc)
    if after != before:
        failures.append("malformed input changed the database")
    sc.tally.fault(f"malformed input on {len(_cli_cases(sc)) + 9} entry points")
    assert not failures, "malformed input was not refused cleanly:\n" + "\n".join(failures)

"""A consent change from the terminal never talks to Prefect (issue 13, "quiet CLI").

The wake-up of ``propagate`` travels through the database (``pg_notify`` in the committing
transaction, or the loop's poll on SQLite), so a change commits at once and prints nothing of
Prefect's, even with ``PREFECT_API_URL`` pointing at a server that is down.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.net import free_port

#: Runs the CLI in a fresh interpreter and reports whether Prefect was ever imported.
PROBE = """
import sys
from consentflow.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("prefect imported:", "prefect" in sys.modules, file=sys.stderr)
raise SystemExit(code)
"""


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    dead = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**os.environ, "CONSENTFLOW_DATABASE_URL": database_url, "PREFECT_API_URL": dead}
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_revocation_with_the_prefect_server_down_commits_and_says_nothing(cli, database_url):
    assert cli("purpose", "add", "news", "--title", "News", "--validity-days", "30").code == 0
    assert cli("system", "add", "crm", "--purposes", "news").code == 0
    assert cli("subject", "add", "alice").code == 0
    assert cli("consent", "grant", "alice", "news").code == 0

    r = run_cli(database_url, "consent", "revoke", "alice", "news")

    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "prefect imported: False"
    assert "Still processing" not in r.stdout + r.stderr
    state = cli("check", "alice", "news", "--json")
    assert state.code == 1 and '"withdrawn"' in state.out

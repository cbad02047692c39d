"""`consentflow run FLOW` with a Prefect server configured: a run of the flow's deployment on a
worker (the test server, a process pool without a worker: creation is what the command does),
or with --local in this process; who asked is recorded either way. Runs in process without a
server are tested with the flows (tests/flows/test_lifecycle_flows.py); how a run without one
starts its embedded Prefect (a prepared database kept between runs) at the end."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from consentflow import db, purposes
from consentflow.cli import _embedded
from consentflow.cli.run import requester
from consentflow.models import utcnow
from tests.support import deployments
from tests.support.seeding import audit_entries, give, row_counts, seed_subjects

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def deployed(prefect_harness) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return deployments.deploy()


@pytest.fixture
def on_server(engine, deployed, monkeypatch):  # type: ignore[no-untyped-def]
    """PREFECT_API_URL names the test server; one purpose, news."""
    monkeypatch.setenv("PREFECT_API_URL", deployments.api_url())
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    return engine


def test_a_run_goes_to_a_worker_when_a_server_is_configured(on_server, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--dry-run", "--purposes", "news", "--json")
    assert r.code == 0, r.err
    started = json.loads(r.out)
    who = requester()
    assert who.startswith("cli:") and started["requested_by"] == who
    assert started["deployment"] == "expiry-sweep/adhoc" and started["state"] == "Scheduled"
    created = deployments.flow_run(started["run_id"])
    assert created.parameters == {"dry_run": True, "purposes": ["news"]}
    assert f"requested-by:{who}" in created.tags
    [entry] = audit_entries(on_server, "flow.requested")
    assert entry.run_id == started["run_id"] and entry.actor == who
    assert entry.channel == "support" and entry.detail["parameters"] == created.parameters

    text = cli("run", "expiry-sweep", "--batch-size", "10")
    assert text.code == 0, text.err
    first, link = text.out.strip().splitlines()
    assert first.startswith("expiry-sweep: run ") and "created on expiry-sweep/adhoc" in first
    assert first.endswith(f"(Scheduled), requested by {who}")
    assert link.strip().endswith(f"/runs/flow-run/{first.split()[2]}")
    # Nothing ran in this process: no end entry, only what was asked.
    assert audit_entries(on_server, "flow.run") == audit_entries(on_server, "flow.dry_run") == []
    assert len(audit_entries(on_server, "flow.requested")) == 2


def test_local_runs_here_and_records_who_asked(on_server, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--local", "--dry-run", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["outcome"] == "completed" and report["deployment"] is None
    assert report["requested_by"] == requester()
    [entry] = audit_entries(on_server, "flow.dry_run")
    assert entry.detail == report
    assert audit_entries(on_server, "flow.requested") == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["collection-followups"], 1, "no deployment of collection-followups on the Prefect"),
        (["reconsent"], 2, "reconsent has several deployments (first, second): name one"),
        (["reconsent", "--deployment", "third"], 1, "no deployment reconsent/third"),
        (["expiry-sweep", "--local", "--watch"], 2, "--watch are for a run on a worker"),
        (["expiry-sweep", "--local", "--deployment", "adhoc"], 2, "not --local"),
        (["expiry-sweep", "--param", "dryrun=true"], 2, "bad --param 'dryrun=true'"),
        (["expiry-sweep", "--purposes", "nope"], 2, "purposes: unknown purpose 'nope'"),
        (["expiry-sweep", "--as-of", "2999-01-01"], 2, "only a dry run may look ahead"),
    ],
)
def test_refusals_are_one_line_and_create_nothing(on_server, cli, args, code, message) -> None:  # type: ignore[no-untyped-def]
    before, runs_before = row_counts(on_server), deployments.flow_run_count()
    r = cli("run", *args)
    assert r.code == code, r.err
    [line] = r.err.strip().splitlines()
    assert message in line and "Traceback" not in r.err
    assert row_counts(on_server) == before
    assert deployments.flow_run_count() == runs_before


def test_several_deployments_one_named(on_server, cli, deployed) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "reconsent", "--deployment", "first", "--dry-run", "--json")
    assert r.code == 0, r.err
    created = deployments.flow_run(json.loads(r.out)["run_id"])
    assert created.deployment_id == deployed["reconsent/first"]


def test_watch_needs_a_server(engine, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("run", "expiry-sweep", "--watch")
    assert r.code == 2 and "--watch needs a Prefect server" in r.err


# ------------------------------------------------------------------------------------------
# Without a Prefect server: the embedded one, and what a run prepares for the next
# ------------------------------------------------------------------------------------------


def _user_run(tmp_path: Path, url: str, **extra: str) -> subprocess.Popen[str]:
    """`consentflow run expiry-sweep --json` in its own process, as a new user runs it: no
    consentflow or Prefect settings but the database, a home and temporary directory of its
    own (the prepared database goes to the default data directory under that home)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSENTFLOW_", "PREFECT_")) and k != "DO_NOT_TRACK"
    }
    env.update(
        HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), CONSENTFLOW_DATABASE_URL=url
    )
    env.update(extra)
    env.pop("XDG_DATA_HOME", None)
    command = [sys.executable, "-m", "consentflow.cli", "run", "expiry-sweep", "--json"]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finished(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert err == ""
    report: dict[str, Any] = json.loads(out)
    assert report["outcome"] == "completed"
    return report


def test_a_run_without_a_server_prepares_what_the_next_ones_reuse(tmp_path: Path) -> None:
    """The first run leaves one prepared Prefect database in the data directory; two later runs
    at once both start from it (it is neither prepared again nor changed) and complete; none
    leaves anything in the temporary directory or in ~/.prefect."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    url = f"sqlite:///{tmp_path / 'consentflow.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        purposes.add(s, "news", title="News", validity_days=365)
    give(engine, seed_subjects(engine, 2), "news", utcnow() - timedelta(days=1))

    first = _finished(_user_run(tmp_path, url))
    assert first["totals"] == {"expired": 2}
    store = tmp_path / "home" / ".local" / "share" / "consentflow" / "prefect"
    [prepared] = list(store.iterdir())
    assert prepared.name.startswith("server-") and prepared.suffix == ".db"
    with prepared.open("rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
    before = (prepared.stat().st_ino, prepared.stat().st_mtime_ns)
    digest = hashlib.sha256(prepared.read_bytes()).hexdigest()

    again = [_user_run(tmp_path, url) for _ in range(2)]
    reports = [_finished(p) for p in again]
    assert {r["run_id"] for r in reports}.isdisjoint({first["run_id"]})
    assert len({r["run_id"] for r in reports}) == 2
    assert list(store.iterdir()) == [prepared]
    assert (prepared.stat().st_ino, prepared.stat().st_mtime_ns) == before
    assert hashlib.sha256(prepared.read_bytes()).hexdigest() == digest
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "home" / ".prefect").exists()
    assert len(audit_entries(engine, "flow.run")) == 3
    engine.dispose()


def test_an_embedded_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    """A server that exits at start-up (here: its database cannot be opened) fails the run in
    one line, exit 1, no traceback, nothing recorded or left behind."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    url = f"sqlite:///{tmp_path / 'consentflow.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    before = row_counts(engine)
    nowhere = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'prefect.db'}"
    process = _user_run(tmp_path, url, PREFECT_SERVER_DATABASE_CONNECTION_URL=nowhere)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("consentflow: the embedded Prefect server exited: exit status")
    assert "PREFECT_LOGGING_LEVEL" in line
    assert row_counts(engine) == before
    assert list((tmp_path / "tmp").iterdir()) == []
    engine.dispose()


def test_a_prepared_database_is_checked_and_replaced_whole(tmp_path: Path) -> None:
    """Only a SQLite file stamped by Prefect's migrations is used; saving one writes a single
    self-contained file (no -wal beside it) and removes other versions' files."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database")
    assert not _embedded.usable(garbage)
    assert not _embedded.usable(tmp_path / "missing.db")

    source = tmp_path / "server" / "prefect.db"
    source.parent.mkdir()
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
    assert not _embedded.usable(source)  # migrations never finished: no revision stamped
    with sqlite3.connect(source) as conn:
        conn.execute("INSERT INTO alembic_version VALUES ('head')")

    store = tmp_path / "data" / "prefect"
    store.mkdir(parents=True)
    (store / "server-0.0.1-old.db").write_bytes(b"an older Prefect's")
    template = store / "server-9.9.9-new.db"
    _embedded.save_template(source, template)
    assert [p.name for p in store.iterdir()] == [template.name]
    assert _embedded.usable(template)
    assert [p.name for p in store.iterdir()] == [template.name]  # reading it left nothing
    with sqlite3.connect(f"{template.as_uri()}?immutable=1", uri=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

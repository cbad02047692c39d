"""Alembic migrations: they build exactly the schema the models describe, on both databases, and
an older database's key leaves it for the key file (0002)."""

from __future__ import annotations

import json
import secrets
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from consentflow import audit, db, keys, links, models, settings
from consentflow.errors import InvalidInput


def differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, models.metadata))


def head_revision(engine: Engine) -> str:
    script = ScriptDirectory.from_config(db.alembic_config(engine))
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


@pytest.fixture
def empty_engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A database of the same kind as ``database_url`` with nothing in it."""
    if database_url.startswith("sqlite"):
        engine = db.make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    name = f"consentflow_fresh_{uuid.uuid4().hex[:10]}"
    admin = create_engine(db.normalise_url(database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(db.normalise_url(database_url)).set(database=name)
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert differences(engine) == []


def test_fresh_upgrade_matches_the_models(empty_engine: Engine) -> None:
    assert inspect(empty_engine).get_table_names() == []
    revision = db.upgrade(empty_engine)
    assert revision == head_revision(empty_engine)
    assert differences(empty_engine) == []
    tables = set(inspect(empty_engine).get_table_names()) - {"alembic_version"}
    assert tables == set(models.metadata.tables)
    with Session(empty_engine) as s:
        result = audit.verify(s)
    assert (result.ok, result.entries, result.head_seq, result.head_hash) == (
        True,
        0,
        0,
        audit.GENESIS,
    )


def test_upgrade_is_idempotent(engine: Engine) -> None:
    def snapshot() -> dict[str, int]:
        with Session(engine) as s:
            return {
                t.name: s.execute(sa_select(func.count()).select_from(t)).scalar_one()
                for t in models.metadata.sorted_tables
            }

    before = snapshot()
    first = db.upgrade(engine)
    second = db.upgrade(engine)
    assert first == second == head_revision(engine)
    assert snapshot() == before
    assert before["audit_head"] == 1
    assert differences(engine) == []
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    assert [v[0] for v in versions] == [first]


def _link_signed_with(secret: bytes) -> str:
    """A preference link for subject 1 as ``links.issue`` signs it under ``secret``."""
    claims = {"a": "preferences", "s": 1, "p": None, "e": 4102444800}
    body = links._b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = keys.derive(links._key(secret, links.LinkAction.PREFERENCES), body)
    return f"{body}.{links._b64(sig)}"


def test_upgrade_moves_an_older_databases_key_to_the_key_file(
    empty_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installation from before 0002 kept its generated key in ``instance_key``: the upgrade
    writes it to the key file once (links already sent keep working) and drops it from the
    database; a different key already in the file stops the upgrade before anything changes."""
    for var in ("CONSENTFLOW_SECRET_KEY", "CONSENTFLOW_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONSENTFLOW_DATA_DIR", str(tmp_path / "data"))
    settings.get_settings.cache_clear()
    command.upgrade(db.alembic_config(empty_engine), "0001")
    legacy = "legacy-" + secrets.token_urlsafe(32)
    with empty_engine.begin() as conn:
        conn.execute(
            text("INSERT INTO instance_key (id, secret, created_at) VALUES (1, :s, :t)"),
            {"s": legacy, "t": "2025-01-01 00:00:00"},
        )
    sent = _link_signed_with(legacy.encode())  # a link emailed before the upgrade
    path = keys.key_file_path(empty_engine.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("another-key-entirely-0123456789\n")
    path.chmod(0o600)
    with pytest.raises(InvalidInput, match="holds a different key"):
        db.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT secret FROM instance_key")).scalar_one() == legacy
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
    path.unlink()

    assert db.upgrade(empty_engine) == head_revision(empty_engine)
    assert path.read_text().strip() == legacy
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "instance_key" not in inspect(empty_engine).get_table_names()
    assert differences(empty_engine) == []
    with db.session_scope(empty_engine) as s:
        assert keys.instance_secret(s) == legacy.encode()
        assert links.verify(s, sent, links.LinkAction.PREFERENCES).subject_id == 1
    if empty_engine.dialect.name == "sqlite":
        empty_engine.dispose()
        file = Path(str(empty_engine.url.database))
        raw = b"".join(p.read_bytes() for p in file.parent.glob(file.name + "*") if p != path)
        assert legacy.encode() not in raw
    settings.get_settings.cache_clear()

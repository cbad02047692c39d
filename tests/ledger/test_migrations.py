"""Alembic migrations: they build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from consentflow import audit, db, models


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

"""Database fixtures: a fresh database per test on SQLite and (when configured) PostgreSQL.

Every storage test takes the ``engine`` fixture and so runs once per backend: always on SQLite (a
file), and on PostgreSQL when ``CONSENTFLOW_TEST_POSTGRES_URL`` names a server. There, the test
session creates a database of its own and drops it at the end, so runs never see each other's rows.

Fixtures: ``sqlite_template`` and ``pg_database`` (session: one migrated database each),
``database_url`` (parametrised by backend, also set as ``CONSENTFLOW_DATABASE_URL``), ``engine``,
and ``pg_url`` / ``pg_engine`` for the PostgreSQL-only concurrency tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from consentflow import db, keys, models, settings

PG_URL = os.environ.get("CONSENTFLOW_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgres"] if PG_URL else ["sqlite"]


def _reset_caches() -> None:
    settings.get_settings.cache_clear()
    db._cached_engine.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()  # the last connection closing checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, migrated once, dropped at the end."""
    if not PG_URL:
        pytest.fail("CONSENTFLOW_TEST_POSTGRES_URL is not set")
    admin_url = db.normalise_url(PG_URL)
    name = f"consentflow_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        _dispose_resets()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


#: Per PostgreSQL URL: an engine kept for the session's resets, and the reset's SQL.
_RESETS: dict[str, tuple[Engine, str]] = {}

#: The sequences owned by a column of the given tables (serial and identity columns): what
#: ``TRUNCATE ... RESTART IDENTITY`` restarts.
_OWNED_SEQUENCES = """
SELECT s.oid::regclass::text FROM pg_class s
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
WHERE s.relkind = 'S' AND d.refobjid = ANY(CAST(:tables AS regclass[]))
ORDER BY 1
"""


def _truncate_pg(url: str) -> None:
    """Empty every table, restart their sequences and put back the chain's genesis head: like a
    freshly upgraded database (and like the SQLite template). (The key lives in a key file,
    never in the database.)

    What ``TRUNCATE <all tables> RESTART IDENTITY CASCADE`` did, as ``DELETE``s (children first)
    in one transaction and one round trip: on the tests' small tables that takes ~50 ms where the
    ``TRUNCATE`` took 0.3-0.9 s (it gives each table a new file), once per PostgreSQL test."""
    if url not in _RESETS:
        engine = create_engine(url)
        tables = [t.name for t in models.metadata.sorted_tables]
        with engine.connect() as conn:
            sequences = conn.execute(text(_OWNED_SEQUENCES), {"tables": tables}).scalars().all()
        sql = [f'DELETE FROM "{name}"' for name in reversed(tables)]
        sql += [f"ALTER SEQUENCE {sequence} RESTART" for sequence in sequences]
        sql.append(f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{'0' * 64}')")
        _RESETS[url] = (engine, ";\n".join(sql))
    engine, sql_text = _RESETS[url]
    with engine.begin() as conn:
        conn.exec_driver_sql(sql_text)


def _dispose_resets() -> None:
    for engine, _ in _RESETS.values():
        engine.dispose()
    _RESETS.clear()


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A URL to an empty, migrated database, also set as ``CONSENTFLOW_DATABASE_URL``."""
    if request.param == "sqlite":
        path = tmp_path / "consentflow.db"
        template = request.getfixturevalue("sqlite_template")
        shutil.copy(template, path)
        url = f"sqlite:///{path}"
        template_key = keys.key_file_path(f"sqlite:///{template}")
        if template_key.exists():  # the key `db upgrade` made travels with its database
            shutil.copy2(template_key, keys.key_file_path(url))
    else:
        url = request.getfixturevalue("pg_database")
        _truncate_pg(url)
    monkeypatch.setenv("CONSENTFLOW_DATABASE_URL", url)
    _reset_caches()
    yield url
    _reset_caches()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.get_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """PostgreSQL only, for concurrency claims; required in CI, skipped elsewhere without it."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set CONSENTFLOW_TEST_POSTGRES_URL")
        pytest.skip("set CONSENTFLOW_TEST_POSTGRES_URL to run PostgreSQL concurrency tests")
    yield PG_URL


@pytest.fixture
def pg_engine(
    pg_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """A clean migrated PostgreSQL database (the session's own), set as the default URL."""
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    monkeypatch.setenv("CONSENTFLOW_DATABASE_URL", url)
    _reset_caches()
    engine = db.get_engine(url)
    yield engine
    engine.dispose()
    _reset_caches()

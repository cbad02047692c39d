"""Engines, sessions and schema upgrades; every SQLite/PostgreSQL difference lives here.

SQLite is the embedded default and allows one writer at a time: write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing halfway. PostgreSQL is the
production database; there, row locks (``FOR UPDATE``) serialise changes to one subject and
``SKIP LOCKED`` lets several workers share a queue. SQLAlchemy renders no ``FOR UPDATE`` on SQLite,
where ``BEGIN IMMEDIATE`` already holds the whole database, so callers write one query for both.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import orjson
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlmodel import Session, create_engine

from consentflow.errors import InvalidInput
from consentflow.keys import reference_key
from consentflow.settings import get_settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_T = TypeVar("_T")
_P = ParamSpec("_P")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs written the usual way (``postgresql://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """A new engine for ``url``, configured for consentflow's transaction discipline."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError for malformed URLs
        raise InvalidInput(f"bad database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise InvalidInput(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that we can say BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Read-only units of work (see ``session_scope``) need no write lock: WAL lets them read
    # alongside the one writer instead of queueing behind it.
    readonly = conn.get_execution_options().get(_READONLY)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


_READONLY = "consentflow_readonly"


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``CONSENTFLOW_DATABASE_URL``)."""
    return _cached_engine(normalise_url(url or get_settings().database_url))


@contextmanager
def session_scope(engine: Engine | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: commits if the block succeeds, rolls back everything if it raises.

    ``readonly`` is for units that only read (access checks, dashboards): on SQLite they do not
    take the write lock. Writing in one is a mistake that SQLite may refuse as "locked".
    """
    bind = engine or get_engine()
    if readonly:
        bind = bind.execution_options(**{_READONLY: True})
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class Column(NamedTuple):
    """A column as ``Writer`` needs it: its name and its PostgreSQL type (for array casts)."""

    name: str
    pg_type: str


def _translated(
    method: Callable[Concatenate[Writer, str, _P], _T],
) -> Callable[Concatenate[Writer, str, _P], _T]:
    """Driver errors raised as SQLAlchemy's (``IntegrityError``, ``DataError``...), exactly as
    the ORM raises them, so that every door maps them the same way whichever path wrote."""

    @functools.wraps(method)
    def translated(self: Writer, statement: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, statement, *args, **kwargs)
        except self.driver_error as exc:
            raise DBAPIError.instance(statement, None, exc, self.driver_error) from exc

    return translated


class Writer:
    """Many-row statements straight through the database driver, in the session's transaction.

    The ledger's batch writes go through here: SQLAlchemy's per-value type processing costs more
    than the database's own work at tens of thousands of rows per batch. Values are converted
    once per column instead, to exactly what the ORM types store (so ORM reads see the same
    thing): on SQLite, timestamps as naive-UTC text and UUIDs as 32 hex digits; on PostgreSQL
    the driver takes aware datetimes and UUIDs as they are. SQL is written with ``?``
    placeholders and adapted to the driver's style.
    """

    def __init__(self, session: Session) -> None:
        conn = session.connection()  # begins the session's transaction if it has not yet
        self.pg = conn.dialect.name == "postgresql"
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self.driver_error: type[Exception] = conn.dialect.loaded_dbapi.Error

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def ts(self, value: datetime | None) -> Any:
        if value is None or self.pg:
            return value
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value.isoformat()}: use an aware UTC datetime")
            value = value.astimezone(UTC)
        return value.isoformat(" ", "microseconds")[:-6]  # drop the "+00:00"

    def uuid(self, value: uuid.UUID) -> Any:
        return value if self.pg else value.hex

    def from_ts(self, value: Any) -> datetime | None:
        """A timestamp as the driver returned it, as an aware UTC datetime."""
        if value is None:
            return None
        if self.pg:
            aware: datetime = value.astimezone(UTC)
            return aware
        return datetime.fromisoformat(value + "+00:00")

    @_translated
    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.cursor.execute(self._sql(sql), tuple(params))
        return list(self.cursor.fetchall())

    @_translated
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self._sql(sql), rows)

    @_translated
    def insert(self, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) in one statement per batch.

        PostgreSQL gets one ``INSERT ... SELECT FROM unnest(arrays)``: a single statement
        however many rows, which is what makes batches fast there; from ``COPY_ROWS`` rows on,
        ``COPY ... FROM STDIN`` (the bulk import's batches: the same rows, the fastest way in).
        """
        if not rows:
            return
        names = ", ".join(c.name for c in columns)
        if not self.pg:
            marks = ",".join("?" * len(columns))
            self.cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            return
        if len(rows) >= COPY_ROWS:
            with self.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        arrays = ", ".join(f"%b::{c.pg_type}[]" for c in columns)
        self.cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})",
            [list(col) for col in zip(*rows, strict=True)],
        )

    @_translated
    def update(
        self, table: str, key: Column, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Set ``columns`` of the rows whose ``key`` is the first value of each row tuple."""
        if not rows:
            return
        if not self.pg:
            sets = ", ".join(f"{c.name} = ?" for c in columns)
            self.cursor.executemany(
                f"UPDATE {table} SET {sets} WHERE {key.name} = ?",
                [(*r[1:], r[0]) for r in rows],
            )
            return
        cols = [key, *columns]
        arrays = ", ".join(f"%b::{c.pg_type}[]" for c in cols)
        sets = ", ".join(f"{c.name} = v.{c.name}" for c in columns)
        names = ", ".join(c.name for c in cols)
        self.cursor.execute(
            f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({names})"
            f" WHERE {table}.{key.name} = v.{key.name}",
            [list(col) for col in zip(*rows, strict=True)],
        )

    @_translated
    def execute(self, sql: str, row: Sequence[Any]) -> None:
        self.cursor.execute(self._sql(sql), tuple(row))

    def new_ids(self, table: str, n: int) -> list[int]:
        """``n`` unused values for ``table``'s ``id`` column, to insert rows with known ids.

        PostgreSQL draws them from the column's sequence (safe beside concurrent writers);
        SQLite continues after the largest id, as its own rowid allocation does: safe because a
        writing transaction holds the database (``BEGIN IMMEDIATE``).
        """
        if n <= 0:
            return []
        if self.pg:
            found = self.fetch(
                f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"
                " FROM generate_series(1, ?)",
                [n],
            )
            return [r[0] for r in found]
        start = self.fetch(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")[0][0]
        return list(range(start, start + n))

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        """A condition ``column`` is one of ``values``, with one parameter however many values
        (``= ANY(array)`` on PostgreSQL, ``json_each`` on SQLite): ``(sql, parameter)``."""
        if self.pg:
            return f"{column} = ANY(?)", list(values)
        return f"{column} IN (SELECT value FROM json_each(?))", orjson.dumps(list(values)).decode()


#: From this many rows on, ``Writer.insert`` uses ``COPY`` on PostgreSQL.
COPY_ROWS = 1000


_ZERO = timedelta(0)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine | None = None) -> str:
    """Create or upgrade the schema to the newest migration; returns the revision now applied.

    Also makes sure the instance secret exists outside the database: unless
    ``CONSENTFLOW_SECRET_KEY`` is set, the key file (``keys.key_file_path``) is generated now,
    mode 0600 (or, from a database of an older version, written once from the key it kept:
    migration 0002), so no later read-only unit of work has to make it. On SQLite the WAL is
    then checkpointed and truncated, so no copy of a dropped key stays in the ``-wal`` file.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = engine or get_engine()
    command.upgrade(alembic_config(engine), "head")
    with session_scope(engine) as session:
        reference_key(session)
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # outside any transaction: a checkpoint needs none open
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() or "base"


def ensure_schema(engine: Engine) -> None:
    """Fail with a clear message if the database has not been created yet."""
    if not inspect(engine).has_table("audit_head"):
        raise InvalidInput("the database has no consentflow schema: run `consentflow db upgrade`")


SCHEMA_ERRORS = (OperationalError, ProgrammingError)

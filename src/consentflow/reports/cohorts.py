"""The rows behind the dashboard's numbers: one definition per cohort (``Definition``: a filter
set, a keyset order, a row shape): ``consents`` (by state now; order: id), ``not-reconfirmed``
(given on a notice older than the latest material one; ``asked=no``: never asked; id),
``requests`` (open; id), ``expiring`` (within ``days``; valid until, id), ``withdrawals``
(recorded in ``[since, until)``; recorded, id), ``changes`` (every consent event recorded in
``[since, until)``, ``action`` picks one; recorded, id), ``deliveries`` (undelivered or dead;
id).

The SQL of each list is ``reports._cohort_sql``'s. Each dashboard count shares its WHERE clause
with its cohort (``reports._where``), so a figure equals the number of rows its list yields
(``tests/web/test_lists_api.py``, which also follows every link on the dashboard).

Invariants:

- Keyset pages only (never OFFSET): a page is the rows after the last row's order key, so it
  costs the same at any depth and no row is listed twice, whatever is inserted meanwhile.
- A filter a cohort does not take, or a name that names nothing, is ``InvalidInput`` starting
  with the field's name. ``restrict`` (a system token's system) limits the lists to its
  purposes and its deliveries. No email address is read unless ``email=True``.
- ``Export`` reads the list in one query on a server-side cursor (one snapshot, planned once),
  a partition at a time: only a partition, a count and a running SHA-256 of the subjects' ids
  are held (flat memory). ``finish`` writes its audit entry once (``cohort.exported``: who,
  cohort, filters, count, SHA-256, complete or not), by reference only.

Failure modes: ``InvalidInput`` as above, and for a cursor that is not this list's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, Select, literal, select, tuple_, type_coerce
from sqlmodel import Session

from consentflow import db, purposes, reconfirm, views
from consentflow.errors import InvalidInput
from consentflow.exports import AuditedExport
from consentflow.models import UTCDateTime, metadata, utcnow
from consentflow.reports import _cohort_sql as sql
from consentflow.reports import _filters
from consentflow.reports._filters import CHOICES, MAX_DAYS, Cohort, Filters, parse_filters

#: The most rows one page holds.
MAX_LIMIT = 1000
#: Rows per page when none is asked for.
DEFAULT_LIMIT = 100
#: Rows read per page of an export.
EXPORT_PAGE = 5000
EXPORTED = "cohort.exported"
encode_cursor = _filters.encode_cursor
__all__ = ["CHOICES", "DEFINITIONS", "MAX_DAYS", "Cohort", "Export", "Filters", "parse_filters"]

_PURPOSE = metadata.tables["purpose"]
_SYSTEM = metadata.tables["system"]


@dataclass(frozen=True)
class Definition:
    """One cohort: its title, the filters it takes, its order key and how it reads."""

    name: Cohort
    title: str
    description: str
    #: The filters this cohort takes (names of ``Filters`` fields).
    takes: frozenset[str]
    #: The row's model (``views``); its fields but ``email`` are the columns, in order.
    model: type[views.View]
    #: The keyset order's kinds: "int", "time" or "uuid", one per key column.
    key_kinds: tuple[str, ...]
    build: Callable[[sql.Query], tuple[Select[Any], tuple[Any, ...]]]

    @property
    def columns(self) -> tuple[str, ...]:
        """The row's columns, in order (the CSV header); ``email`` is added last when asked."""
        return _fields(self.model)


def _fields(model: type[views.View]) -> tuple[str, ...]:
    """A row model's columns, in order, without ``email`` (added only when asked)."""
    return tuple(name for name in model.model_fields if name != "email")


_COMMON = frozenset({"purpose", "locale", "version", "system"})


DEFINITIONS: dict[Cohort, Definition] = {
    d.name: d
    for d in (
        Definition(
            Cohort.CONSENTS,
            "Consents",
            "Every consent by its state now (a given consent past its end counts as expired).",
            _COMMON | {"state", "channel", "since", "until"},
            views.ConsentRowOut,
            ("int",),
            sql.consents,
        ),
        Definition(
            Cohort.NOT_RECONFIRMED,
            "Not yet re-confirmed",
            "Given on a notice older than the purpose's latest material revision "
            "(asked=no: never asked yet).",
            _COMMON | {"channel", "since", "until", "asked"},
            views.ConsentRowOut,
            ("int",),
            sql.not_reconfirmed,
        ),
        Definition(
            Cohort.REQUESTS,
            "Pending requests",
            "Open consent requests, oldest first (since/until: when they were asked; "
            "due_since/due_until: their deadline).",
            _COMMON | {"kind", "since", "until", "due_since", "due_until"},
            views.RequestRowOut,
            ("int",),
            sql.requests,
        ),
        Definition(
            Cohort.EXPIRING,
            "Expiring",
            "Given consents whose validity ends within the next days (30 unless days= says).",
            _COMMON | {"channel", "days"},
            views.ConsentRowOut,
            ("time", "int"),
            sql.expiring,
        ),
        Definition(
            Cohort.WITHDRAWALS,
            "Withdrawals",
            "Withdrawals recorded in a date range (since inclusive, until exclusive).",
            _COMMON | {"channel", "since", "until"},
            views.WithdrawalRowOut,
            ("time", "uuid"),
            sql.withdrawals,
        ),
        Definition(
            Cohort.CHANGES,
            "Consent changes",
            "Every change recorded in a date range (since inclusive, until exclusive): grants, "
            "withdrawals, expiries, imports, ... (action= picks one).",
            _COMMON | {"channel", "since", "until", "action"},
            views.ChangeRowOut,
            ("time", "uuid"),
            sql.changes,
        ),
        Definition(
            Cohort.DELIVERIES,
            "Undelivered and dead deliveries",
            "Withdrawals a downstream system has not received yet (undelivered) or whose "
            "retries are exhausted (dead), per system.",
            frozenset({"purpose", "locale", "system", "status", "since", "until"}),
            views.DeliveryRowOut,
            ("int",),
            sql.deliveries,
        ),
    )
}


def decode_cursor(cohort: Cohort, cursor: str) -> tuple[Any, ...]:
    """The order key a cursor of this list carries (``InvalidInput`` for anything else)."""
    return _filters.decode_cursor(cohort, cursor, DEFINITIONS[cohort].key_kinds)


# ------------------------------------------------------------------------------ reading


def prepare(
    session: Session,
    cohort: Cohort,
    filters: Filters,
    *,
    restrict: str | None = None,
    email: bool = False,
    now: datetime | None = None,
) -> sql.Query:
    """Check the filters against the cohort and resolve their names; ``restrict``: the one
    system a caller may see (a system token's)."""
    definition = DEFINITIONS[cohort]
    for name in filters.given():
        if name not in definition.takes:
            takes = ", ".join(sorted(definition.takes))
            raise InvalidInput(f"{name}: the {cohort.value} list does not take it (takes {takes})")
    for first, last in (("since", "until"), ("due_since", "due_until")):
        start, end = getattr(filters, first), getattr(filters, last)
        if start is not None and end is not None and start >= end:
            raise InvalidInput(f"{last}: must be after {first}")
    purpose_id = None
    if filters.purpose is not None:
        by_key = select(_PURPOSE.c.id).where(_PURPOSE.c.key == filters.purpose)
        purpose_id = session.execute(by_key).scalar()
        if purpose_id is None:
            raise InvalidInput(
                f"purpose: no such purpose {filters.purpose!r}; see `consentflow purpose list`"
            )
    system = restrict or filters.system
    system_id = None
    if system is not None:
        system_id = session.execute(select(_SYSTEM.c.id).where(_SYSTEM.c.name == system)).scalar()
        if system_id is None:
            raise InvalidInput(f"system: no such system {system!r}; see `consentflow system list`")
    materials: dict[int, int] = {}
    if cohort is Cohort.NOT_RECONFIRMED:  # the one list that needs the notices
        materials = reconfirm.materials(purposes.info(session).values())
    return sql.Query(filters, now or utcnow(), email, purpose_id, system_id, materials)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_key: tuple[Any, ...] | None  #: the last row's order key if more may follow


def _statement(cohort: Cohort, q: sql.Query, after: tuple[Any, ...] | None) -> tuple[Any, int]:
    """The list's SELECT in keyset order from after ``after`` (key columns after the row's)."""
    stmt, keys = DEFINITIONS[cohort].build(q)
    width = len(stmt.selected_columns)
    stmt = stmt.add_columns(*(k.label(f"_k{i}") for i, k in enumerate(keys)))
    if after is not None:
        bound = tuple_(*(literal(v, k.type) for v, k in zip(after, keys, strict=True)))
        # The first key's own bound too: an index on it starts there (a row comparison is none).
        stmt = stmt.where(keys[0] >= after[0], tuple_(*keys) > bound)
    return stmt.order_by(*keys), width


def read_page(
    session: Session,
    cohort: Cohort,
    q: sql.Query,
    after: tuple[Any, ...] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """Up to ``limit`` rows after the order key ``after``, in the cohort's order."""
    stmt, width = _statement(cohort, q, after)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        # A page is a short index range: parallel workers only add their start-up to it.
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    result = conn.execute(stmt.limit(limit + 1))  # Core rows: no ORM objects
    names = [str(n) for n in list(result.keys())[:width]]
    raw = result.all()
    more = len(raw) > limit
    return Page(shape(names, width, raw[:limit]), tuple(raw[limit - 1][width:]) if more else None)


def shape(names: list[str], width: int, part: Sequence[Any]) -> list[dict[str, Any]]:
    """Result rows as the list's rows (dicts of the row's columns, the order key left out)."""
    return [dict(zip(names, row[:width], strict=True)) for row in part]


def columns(cohort: Cohort, email: bool = False) -> tuple[str, ...]:
    return (*DEFINITIONS[cohort].columns, *(("email",) if email else ()))


# ------------------------------------------------------------------------------ export


def _is_time(column: Any) -> bool:
    return isinstance(column.type, DateTime)


def _driver_times(stmt: Select[Any]) -> Select[Any]:
    """``stmt`` with its ``UTCDateTime`` columns read as plain timestamps: no Python call per
    value (aware on PostgreSQL, naive UTC on SQLite; the writers take both as UTC)."""
    plain = DateTime(timezone=True)
    return stmt.with_only_columns(
        *(
            type_coerce(c, plain) if isinstance(c.type, UTCDateTime) else c
            for c in stmt.selected_columns
        )
    )


@dataclass(kw_only=True)
class Export(AuditedExport):
    """One streamed export of a cohort: iterate ``chunks()`` once, then ``finish()``
    (``exports.AuditedExport``: ``cohort.exported``). A chunk of rows counts as handed out once
    the consumer asks for the next one.
    """

    action: ClassVar[str] = EXPORTED
    cohort: Cohort
    query: sql.Query
    page_size: int | None = None

    def chunks(self) -> Generator[bytes]:
        """The export's body: the CSV header (CSV only), then one chunk per ``page_size`` rows.

        One query, read through a server-side cursor (one snapshot; the database plans the
        whole list once, not a page at a time). Rows stay the driver's tuples and timestamps
        the driver's values (``_driver_times``: no conversion per value; on PostgreSQL the
        transaction's time zone is UTC), written a chunk at a time (``views.cohort_jsonl``,
        ``views.cohort_csv``) in the row models' JSON form.
        """
        size = self.page_size or EXPORT_PAGE
        columns_ = columns(self.cohort, self.query.email)
        csv = self.format == "csv"
        if csv:
            yield views.cohort_csv_header(columns_)
        stmt, width = _statement(self.cohort, self.query, None)
        stmt = _driver_times(stmt)
        times = [i for i, c in enumerate(stmt.selected_columns[:width]) if _is_time(c)]
        with db.session_scope(self.engine, readonly=True) as session:
            conn = session.connection()
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
            options = {"stream_results": True, "yield_per": size}
            result = conn.execute(stmt, execution_options=options)
            names = tuple(str(n) for n in list(result.keys())[:width])
            if names != columns_:  # the row model and the SELECT disagree: a bug, say so
                raise RuntimeError(f"{self.cohort.value}: columns {names} != {columns_}")
            at = names.index("subject")
            for part in result.partitions(size):
                yield (
                    views.cohort_csv(part, names, times) if csv else views.cohort_jsonl(names, part)
                )
                self.handed([r[at] for r in part])
        self.complete = True

    def detail(self) -> dict[str, Any]:
        given = self.query.filters.given()
        return {"cohort": self.cohort.value, "filters": given, "email": self.query.email}

    @property
    def purpose_key(self) -> str | None:
        return self.query.filters.purpose

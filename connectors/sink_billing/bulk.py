"""Set-based writes: many rows per statement, dialect-aware.

Two operations, both counting the rows they wrote so that the caller can tell
whether another transaction got there first:

* insert rows whose key is still absent (``INSERT ... ON CONFLICT DO NOTHING``);
* compare-and-set: update stored rows only where a guard column still holds the
  value read earlier in the transaction (``UPDATE ... FROM <rows> WHERE guard = expected``).
  On PostgreSQL an UPDATE that waited for another transaction's lock re-checks
  the guard on the row that transaction committed, so a lost update is impossible.

``MultiRowUpsert`` sends the rows as array parameters (PostgreSQL) or runs one
prepared statement for all rows (SQLite). ``CopyMerge`` (PostgreSQL only) COPYs
the rows into a temporary table first -- or, for rows the caller read as absent
(``insert_fresh``), straight into the target under a savepoint, merging only if a
unique violation shows that one was there after all. Both run inside the caller's
transaction. bench/billing_db.py compares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy import (
    BigInteger, Date, DateTime, Integer, Numeric, String, Table, bindparam, column, func, select, table, text, update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import FromClause, TableClause
from sqlalchemy.types import TypeEngine



class Rows(NamedTuple):
    """Rows of one table: the column names once, then one tuple of values per row in that order
    (a tuple per event is cheaper to build than a dict, and is what COPY sends)."""

    names: tuple[str, ...]
    values: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row)) for row in self.values]

# The rows' extra column holding each guard value read earlier (compare-and-set).
EXPECTED = "cas_expected"
_UNIQUE_VIOLATION = "23505"  # SQLSTATE unique_violation
# Insert rowcounts are otherwise not kept by every driver/dialect pairing (psycopg: -1).
_COUNTED = {"preserve_rowcount": True}


class BulkUpsert(Protocol):
    def __call__(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        """Insert ``rows``, skipping any whose ``keys`` are stored already; returns how many were inserted."""

    def insert_fresh(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        """As ``__call__``, for rows whose keys were all read as absent: the cheapest insert, the same result."""

    def compare_and_set(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str],
                        guard: str, expected: Sequence[Any]) -> int:
        """Update the stored rows named by ``keys`` to ``rows`` where the ``guard`` column still holds
        ``expected`` (one value per row); returns how many were updated."""


def dialect_insert(conn: Connection, target: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(target)
    raise ValueError(f"unsupported database dialect {conn.dialect.name}")


def _count(conn: Connection, stmt: Any, params: Any = None) -> int:
    return int(conn.execute(stmt, params, execution_options=_COUNTED).rowcount)


def _guarded_update(target: Table, source: FromClause, names: Sequence[str], keys: Sequence[str],
                    guard: str) -> Any:
    """UPDATE target SET <non-key columns> FROM source WHERE <keys match> AND target.guard = source.expected."""
    return update(target).values({n: source.c[n] for n in names if n not in keys}).where(
        *(target.c[k] == source.c[k] for k in keys), target.c[guard].is_not_distinct_from(source.c[EXPECTED]))


class MultiRowUpsert:
    """One statement for all rows.

    PostgreSQL: ``INSERT ... SELECT unnest(:col1), unnest(:col2), ...`` (or
    ``UPDATE ... FROM (SELECT unnest(...))``) with one array parameter per column --
    one statement of constant text, so neither SQLAlchemy nor psycopg re-parses a
    query with thousands of placeholders per flush (measured: a literal
    ``VALUES (...), (...)`` list of 1000 rows spends most of its time compiling).
    SQLite: one prepared statement run for every row (``executemany``), which is the
    set-based form for an in-process database.
    """

    def __call__(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        if not rows.values:
            return 0
        names = rows.names
        if conn.dialect.name == "postgresql":
            stmt = postgresql.insert(target).from_select(names, _unnest(target, names))
            return _count(conn, stmt.on_conflict_do_nothing(index_elements=list(keys)), _arrays(rows))
        stmt = dialect_insert(conn, target).on_conflict_do_nothing(index_elements=list(keys))
        return _count(conn, stmt, rows.dicts())

    def insert_fresh(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        return self(conn, target, rows, keys)

    def compare_and_set(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str],
                        guard: str, expected: Sequence[Any]) -> int:
        if not rows.values:
            return 0
        names = rows.names
        if conn.dialect.name == "postgresql":
            source = _unnest(target, names, guard_type=target.c[guard].type).subquery("changed")
            arrays = {**_arrays(rows), f"rows_{EXPECTED}": list(expected)}
            return _count(conn, _guarded_update(target, source, names, keys, guard), arrays)
        # Bind names must differ from the column names an UPDATE sets.
        stmt = update(target).values({n: bindparam(f"row_{n}") for n in names if n not in keys}).where(
            *(target.c[k] == bindparam(f"row_{k}") for k in keys),
            target.c[guard].is_not_distinct_from(bindparam(f"row_{EXPECTED}")))
        params = [{**{f"row_{n}": v for n, v in zip(names, row)}, f"row_{EXPECTED}": value}
                  for row, value in zip(rows.values, expected, strict=True)]
        return _count(conn, stmt, params)


def _unnest(target: Table, names: Sequence[str], guard_type: TypeEngine[Any] | None = None) -> Any:
    columns = [(n, target.c[n].type) for n in names] + ([(EXPECTED, guard_type)] if guard_type is not None else [])
    return select(*(
        func.unnest(bindparam(f"rows_{n}", type_=postgresql.ARRAY(_unbounded(t)))).label(n) for n, t in columns
    ))


def _arrays(rows: Rows) -> dict[str, list[Any]]:
    return {f"rows_{n}": list(column) for n, column in zip(rows.names, zip(*rows.values))}


def _unbounded(column_type: TypeEngine[Any]) -> TypeEngine[Any]:
    """The array's element type without length/precision: an explicit cast to
    VARCHAR(64) or NUMERIC(12,2) would silently truncate or round, while the
    INSERT's own assignment rejects a value that does not fit (a PermanentError)."""
    if isinstance(column_type, String):
        return String()
    if isinstance(column_type, Numeric):
        return Numeric()
    return column_type


class CopyMerge:
    """COPY into a transaction-scoped temporary table, then one merging INSERT ... SELECT (or UPDATE ... FROM)."""

    def __call__(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        if not rows.values:
            return 0
        if conn.dialect.name != "postgresql":
            return MultiRowUpsert()(conn, target, rows, keys)
        names = rows.names
        staging = _stage(conn, target, names, rows.values)
        stmt = postgresql.insert(target).from_select(names, select(*(staging.c[n] for n in names)))
        written = _count(conn, stmt.on_conflict_do_nothing(index_elements=list(keys)))
        conn.execute(text(f'TRUNCATE "{staging.name}"'))  # several merges may share one transaction
        return written

    def insert_fresh(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str]) -> int:
        """COPY straight into ``target``: no staging table and no merge. A unique violation (a row
        was there after all: a replay, or another task) rolls back to the savepoint and merges, so
        the count still tells the caller how many rows were new; any other error propagates."""
        if not rows.values or conn.dialect.name != "postgresql":
            return self(conn, target, rows, keys)
        names = rows.names
        try:
            with conn.begin_nested():
                _copy(conn, target.name, names, [_copy_type(target.c[n].type) for n in names], rows.values)
        except Exception as error:
            if getattr(getattr(error, "diag", None), "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
            return self(conn, target, rows, keys)
        return len(rows.values)

    def compare_and_set(self, conn: Connection, target: Table, rows: Rows, keys: Sequence[str],
                        guard: str, expected: Sequence[Any]) -> int:
        if not rows.values:
            return 0
        if conn.dialect.name != "postgresql":
            return MultiRowUpsert().compare_and_set(conn, target, rows, keys, guard, expected)
        names = rows.names
        values = ((*row, value) for row, value in zip(rows.values, expected, strict=True))
        staging = _stage(conn, target, names, values, guard_type=target.c[guard].type)
        written = _count(conn, _guarded_update(target, staging, names, keys, guard))
        conn.execute(text(f'TRUNCATE "{staging.name}"'))
        return written


def _stage(conn: Connection, target: Table, names: Sequence[str], values: Iterable[Sequence[Any]],
           guard_type: TypeEngine[Any] | None = None) -> TableClause:
    """Binary-COPY ``values`` (one list per row: ``names``, then the expected guard value if
    ``guard_type`` is given) into a temporary table shaped like ``target``."""
    staging = f"staging_{target.name}" if guard_type is None else f"staging_{target.name}_guarded"
    extra = "" if guard_type is None else f', "{EXPECTED}" {guard_type.compile(dialect=conn.dialect)}'
    # Created once per connection (a no-op afterwards); emptied by every commit or rollback.
    conn.execute(text(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{staging}" '
                      f'(LIKE "{target.name}" INCLUDING DEFAULTS{extra}) ON COMMIT DELETE ROWS'))
    columns = [*names, *([EXPECTED] if guard_type is not None else [])]
    types = [_copy_type(target.c[n].type) for n in names] + ([_copy_type(guard_type)] if guard_type else [])
    _copy(conn, staging, columns, types, values)
    return table(staging, *(column(n) for n in columns))


def _copy(conn: Connection, table_name: str, columns: Sequence[str], types: Sequence[str],
          values: Iterable[Sequence[Any]]) -> None:
    quoted = ", ".join(f'"{n}"' for n in columns)
    raw = conn.connection.driver_connection  # psycopg.Connection, same transaction
    assert raw is not None
    with raw.cursor() as cursor:
        # Binary COPY: no text formatting of numbers and times on either side.
        with cursor.copy(f'COPY "{table_name}" ({quoted}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(list(types))
            write_row = copy.write_row
            for row in values:
                write_row(row)


def _copy_type(column_type: TypeEngine[Any]) -> str:
    """PostgreSQL type name for binary COPY of a column (length checks still apply on input)."""
    if isinstance(column_type, String):
        return "text"
    if isinstance(column_type, BigInteger):
        return "int8"
    if isinstance(column_type, Integer):
        return "int4"
    if isinstance(column_type, Numeric):
        return "numeric"
    if isinstance(column_type, DateTime):
        return "timestamptz" if column_type.timezone else "timestamp"
    if isinstance(column_type, Date):
        return "date"
    raise TypeError(f"no COPY type for {column_type!r}")


def bulk_upsert(method: str) -> BulkUpsert:
    """The strategy named by BILLING_WRITE_METHOD."""
    if method == "copy":
        return CopyMerge()
    if method == "multirow":
        return MultiRowUpsert()
    raise ValueError(f"unknown billing write method {method}")

"""Set-based upserts: many rows per statement, dialect-aware.

``MultiRowUpsert`` sends one ``INSERT ... ON CONFLICT`` whose rows come from
array parameters (PostgreSQL) or one prepared statement for all rows (SQLite). ``CopyMerge`` (PostgreSQL only) COPYs the rows
into a temporary table and merges them with one ``INSERT ... SELECT ... ON
CONFLICT``. Both run inside the caller's transaction. bench/billing_db.py
compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import BigInteger, Date, DateTime, Integer, Numeric, String, Table, bindparam, column, func, select, table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

Row = dict[str, Any]


class BulkUpsert(Protocol):
    def __call__(self, conn: Connection, target: Table, rows: Sequence[Row], keys: Sequence[str],
                 update: Sequence[str] = ()) -> None:
        """Insert ``rows``; on a key conflict update the ``update`` columns (none = keep the old row)."""


def dialect_insert(conn: Connection, target: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(target)
    raise ValueError(f"unsupported database dialect {conn.dialect.name}")


def _on_conflict(stmt: Any, keys: Sequence[str], update: Sequence[str]) -> Any:
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update})


class MultiRowUpsert:
    """One ``INSERT ... ON CONFLICT`` for all rows.

    PostgreSQL: ``INSERT ... SELECT unnest(:col1), unnest(:col2), ...`` with one
    array parameter per column -- one statement of constant text, so neither
    SQLAlchemy nor psycopg re-parses a query with thousands of placeholders per
    flush (measured: a literal ``VALUES (...), (...)`` list of 1000 rows spends
    most of its time compiling). SQLite: one prepared statement run for every row
    (``executemany``), which is the set-based form for an in-process database.
    """

    def __call__(self, conn: Connection, target: Table, rows: Sequence[Row], keys: Sequence[str],
                 update: Sequence[str] = ()) -> None:
        if not rows:
            return
        names = list(rows[0])
        if conn.dialect.name == "postgresql":
            arrays = select(*(
                func.unnest(bindparam(f"rows_{n}", type_=postgresql.ARRAY(_unbounded(target.c[n].type)))).label(n)
                for n in names
            ))
            stmt = postgresql.insert(target).from_select(names, arrays)
            conn.execute(_on_conflict(stmt, keys, update), {f"rows_{n}": [row[n] for row in rows] for n in names})
            return
        conn.execute(_on_conflict(dialect_insert(conn, target), keys, update), list(rows))


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
    """COPY into a transaction-scoped temporary table, then one merging INSERT ... SELECT."""

    def __call__(self, conn: Connection, target: Table, rows: Sequence[Row], keys: Sequence[str],
                 update: Sequence[str] = ()) -> None:
        if not rows:
            return
        if conn.dialect.name != "postgresql":
            MultiRowUpsert()(conn, target, rows, keys, update)
            return
        names = list(rows[0])
        staging = f"staging_{target.name}"
        quoted = ", ".join(f'"{n}"' for n in names)
        # Created once per connection (a no-op afterwards); emptied by every commit or rollback.
        conn.execute(text(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{staging}" '
                          f'(LIKE "{target.name}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'))
        raw = conn.connection.driver_connection  # psycopg.Connection, same transaction
        assert raw is not None
        with raw.cursor() as cursor:
            # Binary COPY: no text formatting of numbers and times on either side.
            with cursor.copy(f'COPY "{staging}" ({quoted}) FROM STDIN (FORMAT BINARY)') as copy:
                copy.set_types([_copy_type(target.c[n].type) for n in names])
                write_row = copy.write_row
                for row in rows:
                    write_row([row[n] for n in names])
        source = table(staging, *(column(n) for n in names))
        stmt = postgresql.insert(target).from_select(names, select(*source.c))
        conn.execute(_on_conflict(stmt, keys, update))
        conn.execute(text(f'TRUNCATE "{staging}"'))  # several merges may share one transaction


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

"""Set-based upserts: many rows per statement, dialect-aware.

``MultiRowUpsert`` sends ``INSERT ... VALUES (...), (...) ON CONFLICT`` in
chunks (PostgreSQL and SQLite). ``CopyMerge`` (PostgreSQL only) COPYs the rows
into a temporary table and merges them with one ``INSERT ... SELECT ... ON
CONFLICT``. Both run inside the caller's transaction. bench/billing_db.py
compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Table, column, select, table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

Row = dict[str, Any]
# Bound parameters per statement: PostgreSQL allows 65535, SQLite 32766.
_MAX_PARAMS = 30_000
_MAX_ROWS = 1_000


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
    """Chunks of multi-row ``INSERT ... ON CONFLICT`` statements."""

    def __call__(self, conn: Connection, target: Table, rows: Sequence[Row], keys: Sequence[str],
                 update: Sequence[str] = ()) -> None:
        if not rows:
            return
        size = max(1, min(_MAX_ROWS, _MAX_PARAMS // len(rows[0])))
        for start in range(0, len(rows), size):
            stmt = dialect_insert(conn, target).values(list(rows[start:start + size]))
            conn.execute(_on_conflict(stmt, keys, update))


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
        # ON COMMIT DROP: nothing to clean up, also after a rollback.
        conn.execute(text(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{staging}" '
                          f'(LIKE "{target.name}" INCLUDING DEFAULTS) ON COMMIT DROP'))
        raw = conn.connection.driver_connection  # psycopg.Connection, same transaction
        assert raw is not None
        with raw.cursor() as cursor:
            with cursor.copy(f'COPY "{staging}" ({quoted}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row([row[n] for n in names])
        source = table(staging, *(column(n) for n in names))
        stmt = postgresql.insert(target).from_select(names, select(*source.c))
        conn.execute(_on_conflict(stmt, keys, update))
        conn.execute(text(f'TRUNCATE "{staging}"'))  # several merges may share one transaction


def bulk_upsert(method: str) -> BulkUpsert:
    """The strategy named by BILLING_WRITE_METHOD."""
    if method == "copy":
        return CopyMerge()
    if method == "multirow":
        return MultiRowUpsert()
    raise ValueError(f"unknown billing write method {method}")

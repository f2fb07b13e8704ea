"""SQLAlchemy engines for the sinks that keep their own database (billing, the notify ledger)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url


def make_engine(url: str, *, concurrent: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``: psycopg 3 for PostgreSQL, pysqlite with foreign keys enforced embedded.

    ``concurrent``: several threads write (SQLite then uses its write-ahead log and waits for
    a lock instead of failing at once)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not the psycopg2 default
        connect_args = {"connect_timeout": 5, **kwargs.pop("connect_args", {})}
        # pre_ping: after an outage the pool would otherwise hand out dead connections.
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    if concurrent:
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False, **kwargs.get("connect_args", {})}
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # SQLite ignores FOREIGN KEY constraints unless asked, per connection.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if concurrent:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a committed outbox row survives power loss
        cursor.close()

    return engine

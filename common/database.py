"""SQLAlchemy engines for the sinks that keep their own database (billing, the notify ledger)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool


def _database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError:
        # The value itself may hold a password: never echo it.
        raise ValueError("not a SQLAlchemy database URL (e.g. postgresql+psycopg://user@host/db)") from None
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError("only postgresql and sqlite databases are supported")
    return value


DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
"""A setting holding a SQLAlchemy URL of a PostgreSQL or SQLite database, checked at load time."""


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


def run_alembic_env(version_table: str, command_hint: str) -> None:
    """The body of a connector's Alembic ``env.py``, run in code by its ``schema`` module.

    The caller passes an open connection in ``config.attributes["connection"]`` (so a migration
    runs in the caller's transaction), or a URL as ``sqlalchemy.url``. ``version_table`` is the
    connector's own, so several connectors can share one database."""
    from alembic import context

    def run(connection: Any) -> None:
        context.configure(connection=connection, version_table=version_table, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        raise RuntimeError(f"offline (SQL script) migrations are not supported; run `{command_hint}`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "", poolclass=NullPool)
    with engine.connect() as conn:
        run(conn)
        conn.commit()

"""Alembic environment of the notification sink, run in code by ``connectors.sink_notify.schema``.

The caller passes an open connection in ``config.attributes["connection"]`` (so a
migration runs in the caller's transaction), or a URL as ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

VERSION_TABLE = "notify_alembic_version"  # one database may serve several connectors


def _run(connection: Connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (SQL script) migrations are not supported; run `labconnect migrate sink-notify`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "", poolclass=NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


run_migrations()

"""The billing database: engine, Alembic migrations run in code, and the start-up check.

No alembic.ini is needed: the Alembic Config is built here with
``script_location`` pointing at this package's ``migrations`` directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from common.config import WorkerSettings
from common.errors import ConfigError, RetriableError, scrub

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "billing_alembic_version"  # same name as in migrations/env.py
MIGRATE_HINT = "run `labconnect migrate sink-billing`"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for the billing database (psycopg 3 for PostgreSQL, pysqlite embedded)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not the psycopg2 default
        connect_args = {"connect_timeout": 5, **kwargs.pop("connect_args", {})}
        # pre_ping: after an outage the pool would otherwise hand out dead connections.
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
        # SQLite ignores FOREIGN KEY constraints unless asked, per connection.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision, in one transaction."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def migrate(settings: WorkerSettings) -> None:
    """``labconnect migrate sink-billing``: ConnectorSpec.migrate."""
    engine = make_engine(str(settings.billing_database_url))  # type: ignore[attr-defined]
    try:
        migrate_or_retry(engine)
    finally:
        engine.dispose()


def migrate_or_retry(engine: Engine) -> None:
    """BILLING_MIGRATE_ON_START: upgrade; an unreachable database is a RetriableError."""
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        raise RetriableError(f"billing database migration failed: {scrub(str(exc))}") from exc


def require_current_schema(engine: Engine) -> None:
    """Raise ConfigError (exit 2) naming the fix when the migrations have not run."""
    try:
        found = current_revision(engine)
    except SQLAlchemyError as exc:
        raise RetriableError(f"billing database unavailable: {scrub(str(exc))}") from exc
    expected = head_revision()
    if found != expected:
        raise ConfigError([
            f"BILLING_DATABASE_URL: billing schema is at revision {found or 'none'}, "
            f"this version needs {expected}: {MIGRATE_HINT}"
        ])

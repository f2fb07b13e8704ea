"""The notify ledger's schema: Alembic migrations run in code, and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from common import ConfigError, RetriableError, WorkerSettings
from common.database import make_engine
from common.errors import scrub

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "notify_alembic_version"  # same name as in migrations/env.py
MIGRATE_HINT = "run `labconnect migrate sink-notify`"


def ledger_engine(url: str) -> Engine:
    """The ledger is written by the consumer thread and the sender thread at once."""
    return make_engine(url, concurrent=True)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the ledger to ``revision`` (default: the newest), in one transaction."""
    config = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite runs DDL outside a transaction until the first DML
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def migrate_or_retry(engine: Engine) -> None:
    """An unreachable database is retried; a ledger migrated by a newer version is exit 2."""
    try:
        upgrade(engine)
    except CommandError as exc:
        raise ConfigError([f"NOTIFY_DATABASE_URL: the ledger is at a revision this version does not know ({exc}; "
                           f"this version's newest is {head_revision()}): run the newer sink-notify"]) from exc
    except SQLAlchemyError as exc:
        raise RetriableError(f"notify ledger migration failed: {scrub(str(exc))}") from exc


def require_current_schema(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            found = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    except SQLAlchemyError as exc:
        raise RetriableError(f"notify ledger unavailable: {scrub(str(exc))}") from exc
    if found != head_revision():
        raise ConfigError([f"NOTIFY_DATABASE_URL: the ledger is at revision {found or 'none'}, this version needs "
                           f"{head_revision()}: {MIGRATE_HINT}"])


def migrate(settings: WorkerSettings) -> None:
    """``labconnect migrate sink-notify``: ConnectorSpec.migrate."""
    engine = ledger_engine(str(settings.notify_database_url))  # type: ignore[attr-defined]
    try:
        migrate_or_retry(engine)
    finally:
        engine.dispose()

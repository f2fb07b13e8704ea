"""The billing database: engine, Alembic migrations run in code, and the start-up check.

No alembic.ini is needed: the Alembic Config is built here with
``script_location`` pointing at this package's ``migrations`` directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from common import ConfigError, RetriableError, WorkerSettings
from common.database import make_engine
from common.errors import scrub
from connectors.sink_billing import tables, violations

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "billing_alembic_version"  # same name as in migrations/env.py
MIGRATE_HINT = "run `labconnect migrate sink-billing`"
# Rows an upgrade's unique index rejects: what they are, and how to list them (the query works on the
# database as it is, since the failed upgrade changed nothing; before 0003 a key had at most one charge).
_DUPLICATES = ("SELECT accession, test_code, source_system, count(*) FROM billing_ledger WHERE entry_type = '{0}'"
               " GROUP BY accession, test_code, source_system HAVING count(*) > 1")
_BLOCKING_ROWS = {
    tables.ONE_CHARGE_INDEX: ("bill keys charged more than once", "charge"),
    tables.ONE_REVERSAL_INDEX: ("charges reversed more than once", "reversal"),
}


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


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest), in one transaction."""
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base``: no tables), in one transaction."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations copy a table and drop the original, which an enforced foreign key to it
            # forbids; the pragma only takes effect outside a transaction (SQLite's "ALTER TABLE" recipe).
            _sqlite_foreign_keys(conn, "OFF")
        try:
            with conn.begin():
                if sqlite:
                    conn.exec_driver_sql("BEGIN")  # pysqlite runs DDL outside a transaction until the first DML
                config.attributes["connection"] = conn
                step(config, revision)
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise RuntimeError("the billing migration left a ledger row without its charge; rolled back")
        finally:
            if sqlite:
                _sqlite_foreign_keys(conn, "ON")  # the connection goes back to the pool


def _sqlite_foreign_keys(conn: Connection, state: str) -> None:
    # A setting of the connection, not a statement of a transaction: the migration stays one commit.
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={state}")


def migrate(settings: WorkerSettings) -> None:
    """``labconnect migrate sink-billing``: ConnectorSpec.migrate."""
    engine = make_engine(str(settings.billing_database_url))  # type: ignore[attr-defined]
    try:
        migrate_or_retry(engine)
    finally:
        engine.dispose()


def migrate_or_retry(engine: Engine) -> None:
    """BILLING_MIGRATE_ON_START and `labconnect migrate`: upgrade.

    An unreachable database is a RetriableError. Stored rows that break a rule the
    upgrade adds, or a database migrated by a newer version, are a ConfigError (exit 2,
    no restart): retrying would fail the same way forever, and a person has to act.
    """
    try:
        upgrade(engine)
    except IntegrityError as exc:
        # Not `from exc`: PostgreSQL's DETAIL quotes the offending rows' values.
        raise _rows_block_upgrade(exc) from None
    except CommandError as exc:  # Alembic names the revision ids only
        raise ConfigError([f"BILLING_DATABASE_URL: the billing database is at a revision this version does not "
                           f"know ({exc}; this version's newest is {head_revision()}): a newer sink-billing "
                           "version migrated it; run that version, or downgrade the database with it"]) from exc
    except SQLAlchemyError as exc:
        raise RetriableError(f"billing database migration failed: {scrub(str(exc))}") from exc


def _rows_block_upgrade(error: IntegrityError) -> ConfigError:
    index = violations.unique_index(error)
    if index in _BLOCKING_ROWS:
        rows, entry = _BLOCKING_ROWS[index]
        found = (f"it holds {rows}, which {index} forbids; list them with `{_DUPLICATES.format(entry)}` "
                 f"and keep one {entry} row per bill key (README: sink-billing, Upgrading)")
    else:
        found = f"its rows violate {violations.describe(error)}; correct them"
    return ConfigError([f"BILLING_DATABASE_URL: the billing database cannot be upgraded to revision "
                        f"{head_revision()} (rolled back, nothing changed): {found}, then {MIGRATE_HINT} again"])


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

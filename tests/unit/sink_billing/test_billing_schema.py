from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from common.config import load_settings
from common.errors import ConfigError
from connectors.sink_billing import tables
from connectors.sink_billing.connector import CONNECTOR
from connectors.sink_billing.schema import (
    VERSION_TABLE, alembic_config, current_revision, head_revision, make_engine, require_current_schema, upgrade,
)
from connectors.sink_billing.settings import BillingSettings
from tests.unit.sink_billing.billing_records import start_task


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'billing.db'}"


def test_migrations_create_exactly_the_tables_the_writer_uses(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, tables.metadata) == []
    assert current_revision(engine) == head_revision()


def test_upgrade_is_idempotent_and_downgrade_removes_everything(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine)
    upgrade(engine)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {VERSION_TABLE}


def test_connector_migrate_hook_uses_the_configured_database(tmp_path: Path) -> None:
    assert CONNECTOR.migrate is not None
    CONNECTOR.migrate(load_settings(BillingSettings, {"BILLING_DATABASE_URL": sqlite_url(tmp_path)}))
    assert current_revision(make_engine(sqlite_url(tmp_path))) == head_revision()


def test_unmigrated_database_is_a_config_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BILLING_DATABASE_URL: .*revision none.*labconnect migrate sink-billing"):
        require_current_schema(make_engine(sqlite_url(tmp_path)))
    with pytest.raises(ConfigError, match="labconnect migrate sink-billing"):
        start_task(sqlite_url(tmp_path), billing_migrate_on_start=False)


def test_start_migrates_when_configured(tmp_path: Path) -> None:
    task = start_task(sqlite_url(tmp_path))
    assert task.open([("lab-reports", 0)]) is None
    task.stop()
    assert current_revision(make_engine(sqlite_url(tmp_path))) == head_revision()

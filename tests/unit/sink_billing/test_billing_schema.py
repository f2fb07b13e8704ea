from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, inspect, select, text
from sqlalchemy.engine import Engine

from common.config import load_settings
from common.errors import ConfigError, RetriableError
from connectors.sink_billing import tables
from connectors.sink_billing.audit import charge_counts
from connectors.sink_billing.connector import CONNECTOR
from connectors.sink_billing.events import billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.schema import (
    VERSION_TABLE, current_revision, downgrade, head_revision, make_engine, require_current_schema, upgrade,
)
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST, BillingSettings
from connectors.sink_billing.writer import ChargeWriter
from tests.unit.sink_billing.billing_records import GLUCOSE, JAN_2026_MS, ReportStream, start_task


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
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {VERSION_TABLE}


def test_a_migration_is_one_commit_and_leaves_foreign_keys_enforced(tmp_path: Path) -> None:
    engine, commits = make_engine(sqlite_url(tmp_path)), []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    upgrade(engine)
    assert len(commits) == 1  # crash tests count commits: migration, then one per flush
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


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


# A 0001 database in use: ACC1 charged then corrected (the correction is its latest event), ACC2 reversed.
_AUDIT = "'MSG', 'lab-reports', 0, {offset}, '2026-01-02 00:00:00.000000'"
_ROWS_0001 = [
    "INSERT INTO billing_charges VALUES ('ACC1', '2345-7', 'LIS-A', 'charged', 9.00, 'USD', '2026-01-01', "
    "'2026-01-01 00:00:00.000000', 'F1', 3, 'corrected', 'C1', " + _AUDIT.format(offset=1) + ")",
    "INSERT INTO billing_charges VALUES ('ACC2', '2345-7', 'LIS-A', 'reversed', 9.00, 'USD', '2026-01-01', "
    "'2026-01-01 00:00:00.000000', 'F2', 4, 'cancelled', 'X2', " + _AUDIT.format(offset=3) + ")",
    "INSERT INTO billing_ledger VALUES ('F1', " + _AUDIT.format(offset=0) + ", 'ACC1', '2345-7', 'LIS-A', "
    "'charge', 9.00, 'USD', 'final', 2, '2026-01-01 00:00:00.000000')",
    "INSERT INTO billing_ledger VALUES ('C1', " + _AUDIT.format(offset=1) + ", 'ACC1', '2345-7', 'LIS-A', "
    "'correction', 0, 'USD', 'corrected', 3, '2026-01-01 00:00:00.001000')",
    "INSERT INTO billing_ledger VALUES ('F2', " + _AUDIT.format(offset=2) + ", 'ACC2', '2345-7', 'LIS-A', "
    "'charge', 9.00, 'USD', 'final', 2, '2026-01-01 00:00:00.000000')",
    "INSERT INTO billing_ledger VALUES ('X2', " + _AUDIT.format(offset=3) + ", 'ACC2', '2345-7', 'LIS-A', "
    "'reversal', -9.00, 'USD', 'cancelled', 4, '2026-01-01 00:00:00.003000')",
]


_DOUBLE_CHARGE_0001 = [
    *_ROWS_0001[:1], _ROWS_0001[2],
    "INSERT INTO billing_ledger VALUES ('F1-AGAIN', 'MSG', 'lab-reports', 1, 7, '2026-01-02 00:00:00.000000', "
    "'ACC1', '2345-7', 'LIS-A', 'charge', 9.00, 'USD', 'final', 2, '2026-01-01 00:00:00.000000')",
]


# The ledger as 0001 created it: later revisions add columns, and must keep these values.
LEDGER_0001 = text("SELECT event_id, source_message_id, kafka_topic, kafka_partition, kafka_offset, processed_at,"
                   " accession, test_code, source_system, entry_type, amount, currency, report_status, version,"
                   " service_time FROM billing_ledger")


def database_at_0001_in_use(tmp_path: Path) -> Engine:
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in _ROWS_0001:
            conn.execute(text(statement))
    return engine


def test_upgrade_of_a_database_in_use_keeps_every_row_and_orders_later_corrections(tmp_path: Path) -> None:
    engine = database_at_0001_in_use(tmp_path)
    with engine.connect() as conn:
        ledger_before = sorted(tuple(r) for r in conn.execute(LEDGER_0001))
    upgrade(engine)
    with engine.connect() as conn:
        charges = {r.accession: r for r in conn.execute(select(tables.charges))}
        assert sorted(tuple(r) for r in conn.execute(LEDGER_0001)) == ledger_before
        # 0003: every row names the charge it belongs to.
        assert dict(conn.execute(text("SELECT event_id, charge_event_id FROM billing_ledger")).all()) == {
            "F1": "F1", "C1": "F1", "F2": "F2", "X2": "F2"}
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # enforcement is back on
    # Backfilled from the ledger row of each row's latest event (the correction, the reversal).
    assert charges["ACC1"].latest_event_time == datetime(2026, 1, 1, 0, 0, 0, 1000)
    assert charges["ACC2"].latest_event_time == datetime(2026, 1, 1, 0, 0, 0, 3000)
    # The writer carries on from there: an older re-read correction is nothing, a later one is recorded.
    writer, stream = ChargeWriter(engine, ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))), ReportStream()
    writer.write([billing_event(stream.report("corrected", version=3, event_id="C0", timestamp_ms=JAN_2026_MS))], {})
    writer.write([billing_event(stream.report("corrected", version=3, event_id="C2", timestamp_ms=JAN_2026_MS + 5))],
                 {})
    assert {k.accession: (c.charges, c.corrections, c.reversals) for k, c in charge_counts(engine).items()} == {
        "ACC1": (1, 2, 0), "ACC2": (1, 0, 1)}


def test_downgrade_to_0001_forgets_retractions_and_refuses_shared_event_ids(tmp_path: Path) -> None:
    engine = database_at_0001_in_use(tmp_path)
    upgrade(engine)
    writer, stream = ChargeWriter(engine, ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))), ReportStream()
    writer.write([billing_event(stream.report("cancelled", accession="ACC3"))], {})
    shared = [billing_event(stream.report("final", accession="ACC4", test_code=code, event_id="E4"))
              for code in (GLUCOSE, "718-7")]
    writer.write(shared, {})
    with pytest.raises(Exception, match="UNIQUE constraint failed"):
        downgrade(engine, "0001")
    assert current_revision(engine) == head_revision()  # nothing changed: one transaction
    assert len(charge_counts(engine)) == 4
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM billing_ledger WHERE accession = 'ACC4' AND test_code = '718-7'"))
    downgrade(engine, "0001")
    with engine.connect() as conn:
        statuses = {(r.accession, r.test_code): r.status
                    for r in conn.execute(text("SELECT accession, test_code, status FROM billing_charges"))}
    assert statuses == {("ACC1", GLUCOSE): "charged", ("ACC2", GLUCOSE): "reversed", ("ACC4", GLUCOSE): "charged",
                        ("ACC4", "718-7"): "charged"}  # the cancelled ACC3 is gone


def test_start_on_a_database_whose_rows_block_the_upgrade_is_a_config_error_not_a_retry(tmp_path: Path) -> None:
    """A ConfigError stops the task with exit code 2; any other error would restart it into the same failure."""
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in _DOUBLE_CHARGE_0001:
            conn.execute(text(statement))
    with pytest.raises(ConfigError) as caught:
        start_task(sqlite_url(tmp_path))
    assert not isinstance(caught.value, RetriableError)
    assert str(caught.value).startswith("invalid configuration: BILLING_DATABASE_URL: the billing database cannot "
                                        f"be upgraded to revision {head_revision()}")
    assert "ux_billing_ledger_one_charge" in str(caught.value) and current_revision(engine) == "0001"


def test_downgrade_below_0003_refuses_a_ledger_holding_a_rebill(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine)
    writer, stream = ChargeWriter(engine, ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))), ReportStream()
    writer.write([billing_event(stream.report(status, version=version))
                  for status, version in (("final", 2), ("cancelled", 3), ("final", 4))], {})
    with pytest.raises(Exception, match="CHECK constraint failed"):
        downgrade(engine, "0002")
    assert current_revision(engine) == head_revision()  # one transaction: nothing changed
    (counts,) = charge_counts(engine).values()
    assert counts.rebills == 1


def test_a_database_migrated_by_a_newer_version_stops_an_older_task_instead_of_restarting_it(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(ConfigError, match=rf"revision this version does not know \(.*'9999'; this version's newest "
                                          rf"is {head_revision()}\): a newer sink-billing version migrated it"):
        start_task(sqlite_url(tmp_path))

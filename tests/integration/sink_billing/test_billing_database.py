"""The billing schema on real databases: two tasks racing for one bill key, rows the ledger already
holds, and upgrades of databases in use (0001 -> 0002 -> 0003)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from common.errors import ConfigError, PermanentError, RetriableError
from connectors.sink_billing import tables
from connectors.sink_billing.audit import charge_counts
from connectors.sink_billing.bulk import bulk_upsert
from connectors.sink_billing.events import BillKey, billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.schema import (
    VERSION_TABLE, current_revision, downgrade, head_revision, migrate_or_retry, upgrade,
)
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from connectors.sink_billing.writer import ChargeWriter
from tests.integration.sink_billing.conftest import BillingDatabase
from tests.unit.sink_billing.billing_records import GLUCOSE, TOPIC, CommitsAfterRead, ReportStream, StaleFirstRead
from tests.unit.sink_billing.test_billing_schema import _DOUBLE_CHARGE_0001, _ROWS_0001, LEDGER_0001

RULES = ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))
KEY = BillKey("LIS-A", "ACC1", GLUCOSE)
LEDGER_COLUMNS = ("event_id, source_message_id, kafka_topic, kafka_partition, kafka_offset, processed_at, accession,"
                  " test_code, source_system, entry_type, amount, currency, report_status, version, service_time")
LEDGER_ROW = ("('F1', 'MSG', 'lab-reports', 0, 0, CURRENT_TIMESTAMP, 'ACC1', '2345-7', 'LIS-A', 'charge', 9.00, 'USD',"
              " 'final', 2, CURRENT_TIMESTAMP)")
MIGRATIONS_ON = pytest.mark.parametrize("billing_db", ["sqlite", "postgresql-copy"], indirect=True)


def test_a_bill_key_charged_concurrently_is_retriable_and_the_retry_bills_once(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine)
    upsert = bulk_upsert(billing_db.write_method)
    other, this = ReportStream(partition=0), ReportStream(partition=1)
    ChargeWriter(engine, RULES, upsert).write([billing_event(other.report("final", version=2))], other.positions())
    late = StaleFirstRead(engine, RULES, upsert)
    corrected = [billing_event(this.report("corrected", version=3))]
    with pytest.raises(RetriableError, match=r"\(lab-reports/1@0\.\.0\): a bill key was changed concurrently"):
        late.write(corrected, this.positions())
    assert late.stored_offsets([(TOPIC, 1)]) == {}  # nothing of the failed attempt
    late.write(corrected, this.positions())  # the runtime's retry
    counts = charge_counts(engine)[BillKey("LIS-A", "ACC1", GLUCOSE)]
    assert (counts.charges, counts.corrections, counts.net_amount) == (1, 1, Decimal("9.00"))
    assert late.stored_offsets([(TOPIC, 1)]) == {(TOPIC, 1): 1}


def test_upgrade_of_a_0001_database_in_use_keeps_its_rows_and_round_trips(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in _ROWS_0001:
            conn.execute(text(statement))
        ledger_before = sorted(tuple(r) for r in conn.execute(LEDGER_0001))
    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                tables.metadata) == []
        assert sorted(tuple(r) for r in conn.execute(LEDGER_0001)) == ledger_before
        latest = {r.accession: r.latest_event_time for r in conn.execute(select(tables.charges))}
        by_event = {r.event_id: r.service_time for r in conn.execute(select(tables.ledger))}
    assert latest == {"ACC1": by_event["C1"], "ACC2": by_event["X2"]}
    ChargeWriter(engine, RULES).write([billing_event(ReportStream().report("cancelled", accession="ACC3"))], {})
    downgrade(engine, "0001")
    upgrade(engine)
    with engine.connect() as conn:
        assert sorted(r.accession for r in conn.execute(select(tables.charges))) == ["ACC1", "ACC2"]
        assert sorted(tuple(r) for r in conn.execute(LEDGER_0001)) == ledger_before


# --- Two tasks, one bill key: each flush's read is followed by the other task's commit ---

def charge_row(billing_db: BillingDatabase) -> tuple[str, int, Decimal]:
    with billing_db.engine().connect() as conn:
        row = conn.execute(select(tables.charges)).one()
    return row.status, row.latest_version, row.amount


def test_a_retraction_read_before_another_task_charged_is_retried_and_reverses_that_charge(
        billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine)
    upsert = bulk_upsert(billing_db.write_method)
    other, this = ReportStream(partition=0), ReportStream(partition=1)
    final = [billing_event(other.report("final", version=2))]
    late = CommitsAfterRead(engine, lambda: ChargeWriter(engine, RULES, upsert).write(final, other.positions()),
                            upsert)
    cancelled = [billing_event(this.report("cancelled", version=4))]
    with pytest.raises(RetriableError, match=r"\(lab-reports/1@0\.\.0\): a bill key was changed concurrently"):
        late.write(cancelled, this.positions())
    assert charge_row(billing_db) == ("charged", 2, Decimal("9.00"))  # the other task's charge stands
    assert late.stored_offsets([(TOPIC, 1)]) == {}
    late.write(cancelled, this.positions())  # the runtime's retry re-reads the charge and reverses it
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.reversals, counts.net_amount) == (1, 1, Decimal("0.00"))
    assert charge_row(billing_db) == ("reversed", 4, Decimal("9.00"))


def test_two_tasks_retracting_one_charge_reverse_it_once(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine)
    upsert = bulk_upsert(billing_db.write_method)
    other, this = ReportStream(partition=0), ReportStream(partition=1)
    ChargeWriter(engine, RULES, upsert).write([billing_event(other.report("final", version=2))], {})
    cancelled = [billing_event(other.report("cancelled", version=4))]
    late = CommitsAfterRead(engine, lambda: ChargeWriter(engine, RULES, upsert).write(cancelled, {}), upsert)
    in_error = [billing_event(this.report("entered-in-error", version=5))]
    with pytest.raises(RetriableError, match="changed concurrently"):
        late.write(in_error, this.positions())
    late.write(in_error, this.positions())
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.reversals, counts.net_amount) == (1, 1, Decimal("0.00"))
    assert charge_row(billing_db) == ("reversed", 5, Decimal("9.00"))  # the newer retraction is remembered


def test_two_tasks_releasing_a_reversed_test_again_rebill_it_once(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine)
    upsert = bulk_upsert(billing_db.write_method)
    other, this = ReportStream(partition=0), ReportStream(partition=1)
    ChargeWriter(engine, RULES, upsert).write([billing_event(other.report("final", version=2)),
                                               billing_event(other.report("cancelled", version=3))], {})
    released = [billing_event(other.report("final", version=4))]
    late = CommitsAfterRead(engine, lambda: ChargeWriter(engine, RULES, upsert).write(released, {}), upsert)
    amended = [billing_event(this.report("amended", version=5))]
    with pytest.raises(RetriableError, match="changed concurrently"):
        late.write(amended, this.positions())
    late.write(amended, this.positions())  # now a correction of the rebill, not a second one
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.reversals, counts.rebills, counts.corrections) == (1, 1, 1, 1)
    assert counts.live_charges == 1 and counts.net_amount == Decimal("9.00") and counts.exactly_once


def test_a_charge_the_ledger_already_holds_is_permanent_not_retried_forever(billing_db: BillingDatabase) -> None:
    """What a retraction racing a charge left behind before compare-and-set: the ledger holds the charge, the
    charge row says cancelled. A newer final then charges again, which the one-charge index rejects on
    every retry; no other task is involved, so the record goes to the dead-letter queue."""
    engine = billing_db.engine()
    upgrade(engine)
    upsert, stream = bulk_upsert(billing_db.write_method), ReportStream()
    writer = ChargeWriter(engine, RULES, upsert)
    writer.write([billing_event(stream.report("final", version=2))], stream.positions())
    with engine.begin() as conn:
        conn.execute(tables.charges.update().values(
            status="cancelled", amount=0, currency=None, price_effective_from=None, service_time=None,
            charge_event_id=None, latest_version=4, latest_report_status="cancelled", event_id="X4"))
    released = [billing_event(stream.report("final", version=5))]
    for _attempt in range(2):
        with pytest.raises(PermanentError) as caught:
            writer.write(released, stream.positions())
        assert not isinstance(caught.value, RetriableError)
    message = str(caught.value)
    assert message.startswith("writing 1 billing events (lab-reports/0@1..1): ux_billing_ledger_one_charge rejects")
    assert "no other task changed" in message and "dead-letter queue" in message
    assert "ACC1" not in message and "LIS-A" not in message  # identifiers of rows, let alone values: none
    assert writer.stored_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 1}  # nothing of the failed flush


# --- Upgrades of databases in use ---

@MIGRATIONS_ON
def test_an_upgrade_blocked_by_a_double_charge_stops_with_the_fix_not_a_retry(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in _DOUBLE_CHARGE_0001:  # two tasks charged one key before 0002 forbade it
            conn.execute(text(statement))
    with pytest.raises(ConfigError) as caught:
        migrate_or_retry(engine)
    message = str(caught.value)
    assert f"cannot be upgraded to revision {head_revision()} (rolled back, nothing changed)" in message
    assert "bill keys charged more than once, which ux_billing_ledger_one_charge forbids" in message
    assert "WHERE entry_type = 'charge'" in message and "labconnect migrate sink-billing" in message
    assert "ACC1" not in message and "LIS-A" not in message
    assert current_revision(engine) == "0001"
    with engine.begin() as conn:  # the operator removes the duplicate, and the upgrade goes through
        conn.execute(text("DELETE FROM billing_ledger WHERE event_id = 'F1-AGAIN'"))
    migrate_or_retry(engine)
    assert current_revision(engine) == head_revision()


@MIGRATIONS_ON
def test_an_upgrade_blocked_by_a_charge_reversed_twice_names_the_one_reversal_index(
        billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine, "0001")
    with engine.begin() as conn:
        for statement in _ROWS_0001:  # ACC2 charged (F2) and reversed (X2)
            conn.execute(text(statement))
    upgrade(engine, "0002")
    with engine.begin() as conn:  # a second reversal, as two racing 0002-era tasks could write it
        conn.execute(text(f"INSERT INTO billing_ledger ({LEDGER_COLUMNS}) SELECT 'X5', source_message_id,"
                          " kafka_topic, kafka_partition, kafka_offset + 1, processed_at, accession, test_code,"
                          " source_system, entry_type, amount, currency, 'entered-in-error', 5, service_time"
                          " FROM billing_ledger WHERE event_id = 'X2'"))
    with pytest.raises(ConfigError, match=r"charges reversed more than once, which ux_billing_ledger_one_reversal "
                                          r"forbids; list them with `SELECT .* WHERE entry_type = 'reversal'"):
        migrate_or_retry(engine)
    assert current_revision(engine) == "0002"


@MIGRATIONS_ON
def test_a_0001_era_task_cannot_write_to_a_0002_ledger_so_0002_needs_stopped_tasks(
        billing_db: BillingDatabase) -> None:
    """Why README says to stop every task before 0002: its primary key change alone breaks the ON CONFLICT
    target a 0001-era writer names, whatever latest_event_time's nullability."""
    engine = billing_db.engine()
    upgrade(engine, "0002")
    old_ledger_insert = text(f"INSERT INTO billing_ledger ({LEDGER_COLUMNS}) VALUES {LEDGER_ROW}"
                             " ON CONFLICT (event_id) DO NOTHING")
    with pytest.raises(Exception, match="(?i)on conflict"), engine.begin() as conn:
        conn.execute(old_ledger_insert)


@MIGRATIONS_ON
def test_a_0002_era_task_keeps_writing_during_a_rolling_upgrade_to_0003(billing_db: BillingDatabase) -> None:
    """0003 only adds (a nullable column, a wider CHECK, an index): the rows a 0002-era writer sends still fit."""
    engine = billing_db.engine()
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO billing_charges (accession, test_code, source_system, status, amount, currency,"
            " price_effective_from, service_time, charge_event_id, latest_version, latest_report_status, event_id,"
            " source_message_id, kafka_topic, kafka_partition, kafka_offset, processed_at, latest_event_time)"
            " VALUES ('ACC1', '2345-7', 'LIS-A', 'charged', 9.00, 'USD', '2026-01-01', CURRENT_TIMESTAMP, 'F1', 2,"
            " 'final', 'F1', 'MSG', 'lab-reports', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text(f"INSERT INTO billing_ledger ({LEDGER_COLUMNS}) VALUES {LEDGER_ROW}"
                          " ON CONFLICT (event_id, accession, test_code, source_system) DO NOTHING"))
    ChargeWriter(engine, RULES).write([billing_event(ReportStream().report("cancelled", version=4))], {})
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.reversals, counts.net_amount) == (1, 1, Decimal("0.00"))

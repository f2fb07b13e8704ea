"""BillingSinkTask driven the way the runtime drives it, against real databases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from common.errors import ConfigError, PermanentError
from connectors.sink_billing import tables
from connectors.sink_billing.audit import charge_counts, table_snapshot
from connectors.sink_billing.events import BillKey
from connectors.sink_billing.schema import VERSION_TABLE
from tests.integration.sink_billing.conftest import BillingDatabase
from tests.unit.sink_billing.billing_records import GLUCOSE, TOPIC, UNPRICED, ReportStream, deliver

KEY = BillKey("LIS-A", "ACC1", GLUCOSE)


def report_life(stream: ReportStream) -> None:
    stream.report("preliminary", version=1)
    stream.report("final", version=2)
    stream.report("corrected", version=3)
    stream.report("cancelled", version=4)


@pytest.mark.parametrize("flushes", ["one flush", "a flush per event"])
def test_report_life_bills_one_charge_and_one_reversal(billing_db: BillingDatabase, flushes: str) -> None:
    task, stream = billing_db.task(), ReportStream()
    report_life(stream)
    batches = [stream.records] if flushes == "one flush" else [[r] for r in stream.records]
    for batch in batches:
        deliver(task, batch, stream.positions(batch))
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.corrections, counts.reversals) == (1, 1, 1)
    assert counts.net_amount == 0 and counts.exactly_once
    with billing_db.engine().connect() as conn:
        charge = conn.execute(select(tables.charges)).one()
        ledger = conn.execute(select(tables.ledger).order_by(tables.ledger.c.kafka_offset)).all()
    assert (charge.status, charge.amount, charge.latest_version) == ("reversed", Decimal("9.00"), 4)
    assert charge.charge_event_id == ledger[0].event_id and charge.event_id == ledger[-1].event_id
    assert [(r.entry_type, r.amount) for r in ledger] == [
        ("charge", Decimal("9.00")), ("correction", Decimal("0.00")), ("reversal", Decimal("-9.00"))]
    # Domain rule 7: every row names its source message and Kafka position.
    assert [(r.source_message_id, r.kafka_topic, r.kafka_partition, r.kafka_offset) for r in ledger] == [
        ("MSG-1", TOPIC, 0, 1), ("MSG-2", TOPIC, 0, 2), ("MSG-3", TOPIC, 0, 3)]
    assert all(r.processed_at is not None for r in ledger)


def test_replayed_records_change_no_row(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    report_life(stream)
    stream.report("final", accession="ACC2")
    stream.report("final", accession="ACC3", test_code=UNPRICED)
    deliver(task, stream.records[:3], stream.positions(stream.records[:3]))
    deliver(task, stream.records[3:], stream.positions())
    before = table_snapshot(billing_db.engine())
    deliver(task, stream.records, stream.positions())  # the whole window again
    for record in stream.records:  # and one by one, from a restarted task
        deliver(billing_db.task(), [record], stream.positions())
    assert table_snapshot(billing_db.engine()) == before


def test_unpriced_tests_are_recorded_for_review_with_their_audit_trail(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream(partition=2)
    stream.report("final", test_code=UNPRICED)
    stream.report("final", accession="OLD", timestamp_ms=946_684_800_000)  # 2000: before any price
    deliver(task, stream.records, stream.positions())
    with billing_db.engine().connect() as conn:
        rows = conn.execute(select(tables.unpriced_events).order_by(tables.unpriced_events.c.kafka_offset)).all()
        assert conn.execute(select(tables.charges)).all() == []
    assert [(r.test_code, r.reason, r.kafka_partition, r.kafka_offset) for r in rows] == [
        (UNPRICED, "not_on_price_list", 2, 0), (GLUCOSE, "no_price_on_service_date", 2, 1)]
    assert all(r.reviewed_at is None and r.source_message_id for r in rows)


def test_offsets_are_stored_with_the_rows_and_returned_on_open(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream(partition=1)
    stream.report("final")
    assert task.open([(TOPIC, 0), (TOPIC, 1)]) is None
    deliver(task, stream.records, {(TOPIC, 1): 5, ("other-topic", 0): 17})
    reopened = billing_db.task()
    assert reopened.open([(TOPIC, 0), (TOPIC, 1), ("other-topic", 0)]) == {(TOPIC, 1): 5, ("other-topic", 0): 17}
    assert reopened.open([(TOPIC, 0)]) is None
    deliver(reopened, [], {(TOPIC, 1): 9})  # an empty flush still moves the stored position
    assert reopened.open([(TOPIC, 1)]) == {(TOPIC, 1): 9}


def test_constraint_violation_is_permanent_and_batch_mates_commit_after_abort(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    good_before = stream.report("final", accession="ACC-GOOD-1")
    poison = stream.report("final", accession="")  # violates ck_billing_charges_accession_not_empty
    good_after = stream.report("final", accession="ACC-GOOD-2")
    with pytest.raises(PermanentError) as caught:
        deliver(task, stream.records, stream.positions())
    message = str(caught.value)
    assert "accession_not_empty" in message and "lab-reports/0@0..2" in message
    assert charge_counts(billing_db.engine()) == {} and task.open([(TOPIC, 0)]) is None  # nothing half-written
    # The runtime splits the batch: the poison record goes to the DLQ, its batch-mates are re-put.
    deliver(task, [good_before], {(TOPIC, 0): 1})
    with pytest.raises(PermanentError):
        deliver(task, [poison], {(TOPIC, 0): 2})
    deliver(task, [good_after], {(TOPIC, 0): 3})
    assert {k.accession for k in charge_counts(billing_db.engine())} == {"ACC-GOOD-1", "ACC-GOOD-2"}
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 3}


# SQLite does not enforce VARCHAR lengths: this is a PostgreSQL behaviour.
@pytest.mark.parametrize("billing_db", ["postgresql-copy", "postgresql-multirow"], indirect=True)
def test_oversized_identifier_is_permanent_on_postgresql(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    stream.report("final", accession="A" * 65)
    with pytest.raises(PermanentError, match="SQLSTATE 22001") as caught:
        deliver(task, stream.records, stream.positions())
    assert "AAAA" not in str(caught.value)


def test_unmigrated_database_fails_at_start_naming_the_fix(billing_db: BillingDatabase) -> None:
    with pytest.raises(ConfigError, match=r"revision none, this version needs .*labconnect migrate sink-billing"):
        billing_db.task(billing_migrate_on_start=False)


def test_migrated_schema_matches_the_writer_tables(billing_db: BillingDatabase) -> None:
    billing_db.task()
    with billing_db.engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, tables.metadata) == []


def test_cancellation_before_the_final_is_kept_and_only_a_newer_final_bills(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    deliver(task, [stream.report("cancelled", version=4)], stream.positions())
    deliver(task, [stream.report("final", version=2)], stream.positions())  # re-driven from the DLQ
    assert charge_counts(billing_db.engine()) == {}
    with billing_db.engine().connect() as conn:
        charge = conn.execute(select(tables.charges)).one()
    assert (charge.status, charge.amount, charge.latest_version, charge.currency) == ("cancelled", 0, 4, None)
    deliver(task, [stream.report("final", version=5)], stream.positions())  # released again
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.net_amount) == (1, Decimal("9.00"))


def test_every_test_of_a_report_sharing_one_event_id_is_billed(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    for code in (GLUCOSE, "718-7", UNPRICED):
        stream.report("final", test_code=code, event_id="E1")
    deliver(task, stream.records[:1], stream.positions(stream.records[:1]))
    deliver(task, stream.records[1:], stream.positions())
    deliver(task, stream.records, stream.positions())  # re-read
    counts = charge_counts(billing_db.engine())
    assert {k.test_code: (c.charges, c.net_amount) for k, c in counts.items()} == {
        GLUCOSE: (1, Decimal("9.00")), "718-7": (1, Decimal("6.25"))}
    with billing_db.engine().connect() as conn:
        assert [r.test_code for r in conn.execute(select(tables.unpriced_events))] == [UNPRICED]


def test_hl7_corrections_of_one_version_are_each_recorded_once(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    stream.report("final", version=2)
    stream.report("corrected", version=3, event_id="C1")
    stream.report("corrected", version=3, event_id="C2")
    for record in stream.records:
        deliver(task, [record], stream.positions([record]))
    before = table_snapshot(billing_db.engine())
    deliver(task, stream.records, stream.positions())
    assert table_snapshot(billing_db.engine()) == before
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.corrections, counts.net_amount) == (1, 2, Decimal("9.00"))
    with billing_db.engine().connect() as conn:
        assert conn.execute(select(tables.charges.c.event_id)).scalar() == "C2"


def test_a_test_released_again_after_its_reversal_is_rebilled_once(billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    stream.report("final", version=2)
    stream.report("cancelled", version=3)
    stream.report("final", version=4)  # released again: a rebill
    stream.report("final", version=2)  # the first final, re-driven from the dead-letter queue: nothing
    stream.report("corrected", version=5)
    for record in stream.records:
        deliver(task, [record], stream.positions([record]))
    before = table_snapshot(billing_db.engine())
    deliver(task, stream.records, stream.positions())  # replayed: nothing changes
    assert table_snapshot(billing_db.engine()) == before
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.reversals, counts.rebills, counts.corrections) == (1, 1, 1, 1)
    assert counts.net_amount == Decimal("9.00") and counts.live_charges == 1 and counts.exactly_once
    with billing_db.engine().connect() as conn:
        charge = conn.execute(select(tables.charges)).one()
        rebill = conn.execute(select(tables.ledger).where(tables.ledger.c.entry_type == "rebill")).one()
    assert (charge.status, charge.latest_version, charge.charge_event_id) == ("charged", 5, rebill.event_id)
    assert (rebill.kafka_offset, rebill.charge_event_id, rebill.amount) == (2, rebill.event_id, Decimal("9.00"))


def test_an_unusable_report_is_dead_lettered_by_the_task_and_its_batch_commits(billing_db: BillingDatabase) -> None:
    # A record that is not a usable LabReport needs no database to tell: the task reports it
    # (one dead letter) and the batch commits whole, without the runtime splitting it.
    task, stream = billing_db.task(), ReportStream()
    stream.report("final", accession="ACC-GOOD-1")
    stream.report("bogus-status", accession="ACC-SECRET-9")
    stream.report("final", accession="ACC-GOOD-2")
    deliver(task, stream.records, stream.positions())
    assert [offset for offset, _ in task.context.reported] == [1]  # type: ignore[attr-defined]
    assert "ACC-SECRET" not in task.context.reported[0][1]  # type: ignore[attr-defined]
    assert {k.accession for k in charge_counts(billing_db.engine())} == {"ACC-GOOD-1", "ACC-GOOD-2"}
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 3}

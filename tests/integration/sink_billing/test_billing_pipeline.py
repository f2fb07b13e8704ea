"""BillingSinkTask under a runtime that can rewind it (PostgreSQL): commits in the background,
charge states kept in memory, a second writer still caught, failures rewound to the stored offsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from common.errors import PermanentError, RetriableError
from common.records import SinkRecord
from connectors.sink_billing import tables
from connectors.sink_billing.audit import charge_counts
from connectors.sink_billing.events import BillKey, billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST, BillingSettings
from connectors.sink_billing.task import BillingSinkTask
from connectors.sink_billing.writer import ChargeWriter
from tests.integration.sink_billing.conftest import BillingDatabase
from tests.unit.sink_billing.billing_records import GLUCOSE, TOPIC, FakeContext, ReportStream, deliver

KEY = BillKey("LIS-A", "ACC1", GLUCOSE)
POSTGRESQL = pytest.mark.parametrize("billing_db", ["postgresql-copy", "postgresql-multirow"], indirect=True)


@dataclass
class RewindingContext(FakeContext):
    """The runtime's side: it can rewind, and counts the rewinds asked for."""

    can_rewind: bool = True
    rewinds: int = 0

    def rewind(self) -> None:
        self.rewinds += 1


def pipelined_task(billing_db: BillingDatabase) -> tuple[BillingSinkTask, RewindingContext]:
    context = RewindingContext()
    task = BillingSinkTask(BillingSettings(billing_database_url=billing_db.url,
                                           billing_write_method=billing_db.write_method))
    task.start(context)
    billing_db.tasks.append(task)
    return task, context


def redeliver(task: BillingSinkTask, records: Sequence[SinkRecord], stream: ReportStream) -> None:
    """What the runtime does after a rewind: open again, deliver from the stored offset on."""
    stored = (task.open([(TOPIC, 0)]) or {}).get((TOPIC, 0), 0)
    again = [r for r in records if r.offset >= stored]
    deliver(task, again, stream.positions(again))


@POSTGRESQL
def test_report_life_one_flush_per_event_bills_once_and_only_durable_offsets_are_committed(
        billing_db: BillingDatabase) -> None:
    task, context = pipelined_task(billing_db)
    stream = ReportStream()
    for status, version in (("preliminary", 1), ("final", 2), ("corrected", 3), ("cancelled", 4)):
        record = stream.report(status, version=version)
        deliver(task, [record], stream.positions([record]))
        committable = task.pre_commit(stream.positions([record]))
        # Never an offset ahead of the database: at most this flush's, once its commit has finished.
        assert committable.get((TOPIC, 0), 0) <= task.writer.stored_offsets([(TOPIC, 0)]).get((TOPIC, 0), 0)
    assert task.cached_bill_keys == 1
    assert task.pre_commit({}, wait=True) in ({(TOPIC, 0): 4}, {})
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 4}
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.corrections, counts.reversals, counts.net_amount) == (1, 1, 1, Decimal("0"))
    assert context.rewinds == 0


@POSTGRESQL
def test_a_second_writer_changing_a_cached_bill_key_is_caught_and_the_rewind_bills_it_right(
        billing_db: BillingDatabase) -> None:
    """The cache says 'charged by the final'; another task reverses the charge meanwhile. A correction
    folded on the cache must not overwrite the reversal: the compare-and-set fails the background
    commit, the task asks for a rewind, and the redelivered correction, read cold, changes nothing."""
    task, context = pipelined_task(billing_db)
    stream = ReportStream()
    deliver(task, [stream.report("final", version=2)], stream.positions())
    assert task.cached_bill_keys == 1
    other = ReportStream(partition=1)
    ChargeWriter(billing_db.engine(), ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))).write(
        [billing_event(other.report("cancelled", version=4))], other.positions())
    corrected = stream.report("corrected", version=3)
    deliver(task, [corrected], stream.positions())  # folded on the stale cache, committing in the background
    with pytest.raises(RetriableError, match="compare-and-set"):
        task.pre_commit({}, wait=True)
    assert context.rewinds == 1 and task.cached_bill_keys == 0
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 1}  # nothing of the failed commit
    redeliver(task, stream.records, stream)
    task.pre_commit({}, wait=True)
    counts = charge_counts(billing_db.engine())[KEY]
    assert (counts.charges, counts.corrections, counts.reversals) == (1, 0, 1) and counts.exactly_once
    with billing_db.engine().connect() as conn:
        charge = conn.execute(select(tables.charges)).one()
    assert (charge.status, charge.latest_version) == ("reversed", 4)
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 2}


@POSTGRESQL
def test_a_poison_record_failing_in_the_background_rewinds_and_fails_the_cold_flush_for_the_split(
        billing_db: BillingDatabase) -> None:
    task, context = pipelined_task(billing_db)
    stream = ReportStream()
    deliver(task, [stream.report("final", accession="ACC-1")], stream.positions())
    poison = stream.report("final", accession="")  # violates ck_billing_charges_accession_not_empty
    deliver(task, [poison], stream.positions())  # fails later, in the commit thread
    good = stream.report("final", accession="ACC-2")
    with pytest.raises(RetriableError, match="in the background"):
        deliver(task, [good], stream.positions())
    assert context.rewinds == 1
    # Redelivered from the stored offset, the flush runs cold: the runtime sees the error with the batch.
    with pytest.raises(PermanentError, match="accession_not_empty"):
        redeliver(task, stream.records, stream)
    deliver(task, [good], stream.positions())  # what the split delivers after dead-lettering the poison
    task.pre_commit({}, wait=True)
    assert {k.accession for k in charge_counts(billing_db.engine())} == {"ACC-1", "ACC-2"}
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 3}


@POSTGRESQL
def test_new_bill_keys_are_copied_straight_in_and_a_replay_falls_back_to_the_merge(
        billing_db: BillingDatabase) -> None:
    """Every key new: COPY into the target tables. The same unpriced events again (a replay from a
    task that lost its memory): the direct COPY hits the primary key, the merge skips them."""
    stream = ReportStream()
    for n in range(20):
        stream.report("final", accession=f"ACC{n}", test_code=GLUCOSE if n % 2 else "99999-9")
    task, _ = pipelined_task(billing_db)
    deliver(task, stream.records, stream.positions())
    restarted, context = pipelined_task(billing_db)
    unpriced = [r for r in stream.records if r.value is not None and r.value["test_code"] != GLUCOSE]
    deliver(restarted, unpriced, stream.positions())
    restarted.pre_commit({}, wait=True)
    with billing_db.engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM billing_ledger")).scalar() == 10
        assert conn.execute(text("SELECT count(*) FROM billing_unpriced_events")).scalar() == 10
    assert context.rewinds == 0


@pytest.mark.parametrize("billing_db", ["sqlite", "postgresql-copy"], indirect=True)
def test_charge_rows_the_ledger_refers_to_cannot_be_deleted_without_a_foreign_key(
        billing_db: BillingDatabase) -> None:
    task, stream = billing_db.task(), ReportStream()
    deliver(task, [stream.report("final", version=2), stream.report("cancelled", accession="ACC2")],
            stream.positions())
    refused = ["DELETE FROM billing_charges", "DELETE FROM billing_charges WHERE accession = 'ACC1'"]
    if billing_db.dialect == "postgresql":
        refused.append("TRUNCATE billing_charges")
    for statement in refused:
        with pytest.raises(Exception, match="kept while billing_ledger rows refer to them"), \
                billing_db.engine().begin() as conn:
            conn.execute(text(statement))
    assert charge_counts(billing_db.engine())[KEY].charges == 1
    with billing_db.engine().begin() as conn:  # a cancelled row has no ledger rows: it may go
        conn.execute(text("DELETE FROM billing_charges WHERE accession = 'ACC2'"))
    with billing_db.engine().begin() as conn:  # the ledger's rows first, then the charges: allowed
        conn.execute(text("DELETE FROM billing_ledger"))
        conn.execute(text("DELETE FROM billing_charges"))
        assert conn.execute(text("SELECT count(*) FROM billing_charges")).scalar() == 0

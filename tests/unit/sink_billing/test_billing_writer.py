"""ChargeWriter against an embedded SQLite database: what survives from one flush to the next."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from common.errors import PermanentError, RetriableError
from connectors.sink_billing import tables
from connectors.sink_billing.audit import ChargeCounts, charge_counts
from connectors.sink_billing.events import BillingEvent, BillKey, billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules, ChargeState
from connectors.sink_billing.schema import make_engine, upgrade
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from connectors.sink_billing.writer import ChargeWriter
from tests.unit.sink_billing.billing_records import GLUCOSE, UNPRICED, ReportStream, StaleFirstRead

RULES = ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))
KEY = BillKey("LIS-A", "ACC1", GLUCOSE)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'billing.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def write(writer: ChargeWriter, *events: BillingEvent) -> None:
    writer.write(list(events), {(e.topic, e.partition): e.offset + 1 for e in events})


def ledger(engine: Engine) -> list[tuple[str, str, Decimal]]:
    t = tables.ledger
    with engine.connect() as conn:
        return [(r.test_code, r.entry_type, r.amount)
                for r in conn.execute(select(t).order_by(t.c.kafka_offset, t.c.test_code))]


def test_cancellation_before_any_charge_is_stored_and_a_redriven_final_does_not_bill(engine: Engine) -> None:
    writer, stream = ChargeWriter(engine, RULES), ReportStream()
    write(writer, billing_event(stream.report("cancelled", version=4)))
    write(writer, billing_event(stream.report("final", version=2)))  # re-driven from the DLQ, in a later flush
    assert ledger(engine) == []
    with engine.connect() as conn:
        row = conn.execute(select(tables.charges)).one()
    assert (row.status, row.amount, row.latest_version, row.latest_report_status) == (
        "cancelled", Decimal("0.00"), 4, "cancelled")
    assert row.charge_event_id is None and row.currency is None and row.kafka_offset == 0


def test_a_final_released_again_after_the_cancellation_bills_once(engine: Engine) -> None:
    writer, stream = ChargeWriter(engine, RULES), ReportStream()
    write(writer, billing_event(stream.report("cancelled", version=4)))
    write(writer, billing_event(stream.report("final", version=5)))
    assert ledger(engine) == [(GLUCOSE, "charge", Decimal("9.00"))]
    with engine.connect() as conn:
        row = conn.execute(select(tables.charges)).one()
    assert (row.status, row.amount, row.currency, row.latest_version) == ("charged", Decimal("9.00"), "USD", 5)
    assert row.charge_event_id == row.event_id and row.price_effective_from is not None


def test_second_correction_with_the_same_version_is_written_in_a_later_flush(engine: Engine) -> None:
    writer, stream = ChargeWriter(engine, RULES), ReportStream()
    write(writer, billing_event(stream.report("final", version=2)))
    first = billing_event(stream.report("corrected", version=3, event_id="C1"))
    second = billing_event(stream.report("corrected", version=3, event_id="C2"))
    write(writer, first)
    write(writer, second)
    write(writer, first, second)  # re-read: nothing new
    assert [entry for _, entry, _ in ledger(engine)] == ["charge", "correction", "correction"]
    with engine.connect() as conn:
        row = conn.execute(select(tables.charges)).one()
    assert (row.event_id, row.latest_version) == ("C2", 3)
    assert row.latest_event_time.replace(tzinfo=None) == second.event_time.replace(tzinfo=None)


@pytest.mark.parametrize("flushes", ["one flush", "a flush per test"])
def test_tests_of_one_report_sharing_an_event_id_are_each_billed(engine: Engine, flushes: str) -> None:
    writer, stream = ChargeWriter(engine, RULES), ReportStream()
    events = [billing_event(stream.report("final", test_code=code, event_id="E1"))
              for code in (GLUCOSE, "718-7", UNPRICED, "58410-2")]
    for batch in ([events] if flushes == "one flush" else [[e] for e in events]):
        write(writer, *batch)
    write(writer, *events)  # and re-read
    assert sorted(ledger(engine)) == [("2345-7", "charge", Decimal("9.00")), ("58410-2", "charge", Decimal("14.75")),
                                      ("718-7", "charge", Decimal("6.25"))]
    with engine.connect() as conn:
        assert [r.test_code for r in conn.execute(select(tables.unpriced_events))] == [UNPRICED]


def test_a_bill_key_charged_concurrently_by_another_task_is_retriable_and_the_retry_bills_once(
        engine: Engine) -> None:
    other_partition, this_partition = ReportStream(partition=0), ReportStream(partition=1)
    ChargeWriter(engine, RULES).write([billing_event(other_partition.report("final", version=2))], {})
    late = StaleFirstRead(engine, RULES)
    corrected = billing_event(this_partition.report("corrected", version=3))
    with pytest.raises(RetriableError, match=r"lab-reports/1@0..0.*changed concurrently"):
        write(late, corrected)
    write(late, corrected)  # the runtime's retry: read again, fold again
    assert [entry for _, entry, _ in ledger(engine)] == ["charge", "correction"]
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.corrections, counts.net_amount) == (1, 1, Decimal("9.00"))


def cancel_behind_the_ledgers_back(engine: Engine) -> None:
    """What a retraction racing a charge left before compare-and-set: the ledger holds the charge, the row
    says cancelled."""
    with engine.begin() as conn:
        conn.execute(tables.charges.update().values(
            status="cancelled", amount=0, currency=None, price_effective_from=None, service_time=None,
            charge_event_id=None, latest_version=4, latest_report_status="cancelled", event_id="X4"))


class ChangedBeforeReread(ChargeWriter):
    """Another task changes the bill key after this flush failed on a ledger index, before it re-reads."""

    def __init__(self, engine: Engine, meanwhile: BillingEvent) -> None:
        super().__init__(engine, RULES)
        self.reads, self.meanwhile = 0, meanwhile

    def _load_states(self, conn: Connection, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        self.reads += 1
        if self.reads == 2:
            ChargeWriter(self.engine, RULES).write([self.meanwhile], {})
        return super()._load_states(conn, keys)


def test_an_index_violation_is_retriable_when_another_task_changed_the_bill_key_meanwhile(engine: Engine) -> None:
    stream, other = ReportStream(), ReportStream(partition=1)
    write(ChargeWriter(engine, RULES), billing_event(stream.report("final", version=2)))
    cancel_behind_the_ledgers_back(engine)
    late = ChangedBeforeReread(engine, billing_event(other.report("entered-in-error", version=6)))
    released = billing_event(stream.report("final", version=5))
    with pytest.raises(RetriableError, match=r"changed concurrently by another task \(ux_billing_ledger_one_charge\)"):
        write(late, released)
    write(late, released)  # re-decided on the newer retraction: the final was released before it
    assert ledger(engine) == [(GLUCOSE, "charge", Decimal("9.00"))]


def test_the_same_violation_without_another_task_is_permanent(engine: Engine) -> None:
    stream = ReportStream()
    write(ChargeWriter(engine, RULES), billing_event(stream.report("final", version=2)))
    cancel_behind_the_ledgers_back(engine)
    with pytest.raises(PermanentError, match=r"ux_billing_ledger_one_charge rejects a ledger row although no other"):
        write(ChargeWriter(engine, RULES), billing_event(stream.report("final", version=5)))


def test_a_reversal_rebill_and_second_reversal_are_linked_to_the_charge_each_reverses(engine: Engine) -> None:
    writer, stream = ChargeWriter(engine, RULES), ReportStream()
    for status, version in (("final", 2), ("cancelled", 3), ("final", 4), ("cancelled", 5)):
        write(writer, billing_event(stream.report(status, version=version)))
    t = tables.ledger
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.entry_type, t.c.amount, t.c.event_id, t.c.charge_event_id)
                            .order_by(t.c.kafka_offset)).all()
    (charge, _, first, _), (reversal, _, _, first_reversed), (rebill, _, second, _), (_, _, _, second_reversed) = rows
    assert (charge, reversal, rebill) == ("charge", "reversal", "rebill")
    assert (first_reversed, second_reversed) == (first, second)
    counts = charge_counts(engine)[KEY]
    assert (counts.charges, counts.rebills, counts.reversals, counts.net_amount) == (1, 1, 2, Decimal("0.00"))


def test_exactly_once_allows_rebills_after_reversals_but_never_two_live_charges() -> None:
    assert ChargeCounts(1, 0, 1, Decimal("9"), rebills=1).exactly_once  # charge, reversal, rebill
    assert ChargeCounts(1, 2, 2, Decimal("0"), rebills=1).exactly_once  # ... and reversed again
    assert not ChargeCounts(1, 0, 0, Decimal("18"), rebills=1).exactly_once  # a rebill of a live charge
    assert not ChargeCounts(1, 0, 2, Decimal("-9")).exactly_once  # reversed twice
    assert not ChargeCounts(0, 0, 1, Decimal("0"), rebills=1).exactly_once  # a rebill of nothing

"""The billing schema on real databases: two tasks racing for one bill key, and 0001 -> 0002 with rows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from common.errors import RetriableError
from connectors.sink_billing import tables
from connectors.sink_billing.audit import charge_counts
from connectors.sink_billing.bulk import bulk_upsert
from connectors.sink_billing.events import BillKey, billing_event
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.schema import VERSION_TABLE, downgrade, upgrade
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from connectors.sink_billing.writer import ChargeWriter
from tests.integration.sink_billing.conftest import BillingDatabase
from tests.unit.sink_billing.billing_records import GLUCOSE, TOPIC, ReportStream, StaleFirstRead
from tests.unit.sink_billing.test_billing_schema import _ROWS_0001

RULES = ChargeRules(load_price_list(EXAMPLE_PRICE_LIST))


def test_a_bill_key_charged_concurrently_is_retriable_and_the_retry_bills_once(billing_db: BillingDatabase) -> None:
    engine = billing_db.engine()
    upgrade(engine)
    upsert = bulk_upsert(billing_db.write_method)
    other, this = ReportStream(partition=0), ReportStream(partition=1)
    ChargeWriter(engine, RULES, upsert).write([billing_event(other.report("final", version=2))], other.positions())
    late = StaleFirstRead(engine, RULES, upsert)
    corrected = [billing_event(this.report("corrected", version=3))]
    with pytest.raises(RetriableError, match=r"\(lab-reports/1@0\.\.0\): a bill key was charged concurrently"):
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
        ledger_before = sorted(tuple(r) for r in conn.execute(text("SELECT * FROM billing_ledger")))
    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                tables.metadata) == []
        assert sorted(tuple(r) for r in conn.execute(text("SELECT * FROM billing_ledger"))) == ledger_before
        latest = {r.accession: r.latest_event_time for r in conn.execute(select(tables.charges))}
        by_event = {r.event_id: r.service_time for r in conn.execute(select(tables.ledger))}
    assert latest == {"ACC1": by_event["C1"], "ACC2": by_event["X2"]}
    ChargeWriter(engine, RULES).write([billing_event(ReportStream().report("cancelled", accession="ACC3"))], {})
    downgrade(engine, "0001")
    upgrade(engine)
    with engine.connect() as conn:
        assert sorted(r.accession for r in conn.execute(select(tables.charges))) == ["ACC1", "ACC2"]
        assert sorted(tuple(r) for r in conn.execute(text("SELECT * FROM billing_ledger"))) == ledger_before

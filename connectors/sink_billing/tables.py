"""The billing database as SQLAlchemy Core tables (the writer's view of it).

The schema itself is created and changed only by the Alembic migrations in
``migrations/versions``; ``tests/unit/sink_billing/test_schema.py`` checks that
these definitions and the migrated database agree. README.md describes each table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger, CheckConstraint, Column, Date, DateTime, Index, Integer, MetaData, Numeric,
    PrimaryKeyConstraint, String, Table, text,
)

# Named constraints: an IntegrityError then names the rule a row broke (no values).
NAMING = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}
metadata = MetaData(naming_convention=NAMING)

MONEY = Numeric(12, 2)
TZ_TIME = DateTime(timezone=True)


BILL_KEY = ("accession", "test_code", "source_system")
# A report event's id does not name the test (the tests of one report share it): rows keyed by event are
# keyed by event and bill key.
EVENT_PER_BILL_KEY = ("event_id", *BILL_KEY)
# At most one charge per bill key, and one reversal per charge (or rebill), whichever task writes them:
# a second line of defence behind the writer's compare-and-set of billing_charges.
ONE_CHARGE_INDEX = "ux_billing_ledger_one_charge"
CHARGE_ROWS = "entry_type = 'charge'"
ONE_REVERSAL_INDEX = "ux_billing_ledger_one_reversal"
REVERSAL_ROWS = "entry_type = 'reversal'"
# A rebill is a new charge after a reversal: money in, like a charge.
ENTRY_SIGN = (
    "(entry_type IN ('charge', 'rebill') AND amount >= 0) OR (entry_type = 'correction' AND amount = 0)"
    " OR (entry_type = 'reversal' AND amount <= 0)"
)
# A charged or reversed row names its price and charge event; a cancelled one (no charge yet) none.
CHARGED_OR_CANCELLED = (
    "(status <> 'cancelled' AND currency IS NOT NULL AND price_effective_from IS NOT NULL"
    " AND service_time IS NOT NULL AND charge_event_id IS NOT NULL)"
    " OR (status = 'cancelled' AND amount = 0 AND currency IS NULL AND price_effective_from IS NULL"
    " AND service_time IS NULL AND charge_event_id IS NULL)"
)


def _bill_key(primary_key: bool) -> list[Column]:  # type: ignore[type-arg]
    # accession first: the writer looks charges up by accession.
    return [Column(name, String(64), primary_key=primary_key, nullable=False) for name in BILL_KEY]


def _audit() -> list[Column]:  # type: ignore[type-arg]
    """Domain rule 7: every row names its event, source message and Kafka position."""
    return [
        Column("event_id", String(64), nullable=False),
        Column("source_message_id", String(255), nullable=False),
        Column("kafka_topic", String(249), nullable=False),
        Column("kafka_partition", Integer, nullable=False),
        Column("kafka_offset", BigInteger, nullable=False),
        Column("processed_at", TZ_TIME, nullable=False),
    ]


def _not_empty(*names: str) -> list[CheckConstraint]:
    return [CheckConstraint(f"length({n}) > 0", name=f"{n}_not_empty") for n in names]


charges = Table(
    "billing_charges", metadata,
    *_bill_key(primary_key=True),
    Column("status", String(16), nullable=False),
    Column("amount", MONEY, nullable=False),
    # NULL only in a 'cancelled' row (a retraction before any charge): nothing was priced.
    Column("currency", String(3), nullable=True),
    Column("price_effective_from", Date, nullable=True),
    Column("service_time", TZ_TIME, nullable=True),
    Column("charge_event_id", String(64), nullable=True),
    Column("latest_version", Integer, nullable=False),
    Column("latest_report_status", String(32), nullable=False),
    *_audit(),
    Column("latest_event_time", TZ_TIME, nullable=False),
    CheckConstraint("status IN ('charged', 'reversed', 'cancelled')", name="status"),
    CheckConstraint(CHARGED_OR_CANCELLED, name="charged_or_cancelled"),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    CheckConstraint("length(currency) = 3", name="currency_iso"),
    *_not_empty("accession", "test_code", "source_system"),
)

ledger = Table(
    "billing_ledger", metadata,
    *_audit(),
    *_bill_key(primary_key=False),
    Column("entry_type", String(16), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("report_status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("service_time", TZ_TIME, nullable=False),
    # The charge or rebill this row belongs to (a charge or rebill names itself). NULL only in rows that a
    # pre-0003 task wrote during a rolling upgrade.
    Column("charge_event_id", String(64), nullable=True),
    CheckConstraint(ENTRY_SIGN, name="entry_sign"),
    # No foreign key to billing_charges (0004): the writer inserts every ledger row in the transaction
    # that writes its charge row, and charge rows are never deleted (trigger billing_charges_keep_rows).
    PrimaryKeyConstraint(*EVENT_PER_BILL_KEY),
    Index(ONE_CHARGE_INDEX, *BILL_KEY, unique=True,
          postgresql_where=text(CHARGE_ROWS), sqlite_where=text(CHARGE_ROWS)),
    Index(ONE_REVERSAL_INDEX, *BILL_KEY, "charge_event_id", unique=True,
          postgresql_where=text(REVERSAL_ROWS), sqlite_where=text(REVERSAL_ROWS)),
)

unpriced_events = Table(
    "billing_unpriced_events", metadata,
    *_audit(),
    *_bill_key(primary_key=False),
    Column("reason", String(32), nullable=False),
    Column("report_status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("service_time", TZ_TIME, nullable=False),
    Column("reviewed_at", TZ_TIME, nullable=True),
    PrimaryKeyConstraint(*EVENT_PER_BILL_KEY),
    CheckConstraint("reason IN ('not_on_price_list', 'no_price_on_service_date')", name="reason"),
    *_not_empty("accession", "test_code", "source_system"),
    Index("ix_billing_unpriced_events_test_code", "test_code"),
)

kafka_offsets = Table(
    "billing_kafka_offsets", metadata,
    Column("topic", String(249), primary_key=True),
    Column("kafka_partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", TZ_TIME, nullable=False),
    CheckConstraint("next_offset >= 0", name="next_offset_not_negative"),
)

"""The billing database as SQLAlchemy Core tables (the writer's view of it).

The schema itself is created and changed only by the Alembic migrations in
``migrations/versions``; ``tests/unit/sink_billing/test_schema.py`` checks that
these definitions and the migrated database agree. README.md describes each table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger, CheckConstraint, Column, Date, DateTime, ForeignKeyConstraint, Index, Integer, MetaData, Numeric,
    String, Table,
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


def _bill_key() -> list[Column]:  # type: ignore[type-arg]
    # accession first: the writer looks charges up by accession.
    return [
        Column("accession", String(64), primary_key=True),
        Column("test_code", String(64), primary_key=True),
        Column("source_system", String(64), primary_key=True),
    ]


def _audit(kind: str) -> list[Column]:  # type: ignore[type-arg]
    """Domain rule 7: every row names its event, source message and Kafka position."""
    return [
        Column("event_id", String(64), primary_key=(kind == "event"), nullable=False),
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
    *_bill_key(),
    Column("status", String(16), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("price_effective_from", Date, nullable=False),
    Column("service_time", TZ_TIME, nullable=False),
    Column("charge_event_id", String(64), nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("latest_report_status", String(32), nullable=False),
    *_audit("latest"),
    CheckConstraint("status IN ('charged', 'reversed')", name="status"),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    CheckConstraint("length(currency) = 3", name="currency_iso"),
    *_not_empty("accession", "test_code", "source_system"),
)

ledger = Table(
    "billing_ledger", metadata,
    *_audit("event"),
    Column("accession", String(64), nullable=False),
    Column("test_code", String(64), nullable=False),
    Column("source_system", String(64), nullable=False),
    Column("entry_type", String(16), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("report_status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("service_time", TZ_TIME, nullable=False),
    CheckConstraint(
        "(entry_type = 'charge' AND amount >= 0) OR (entry_type = 'correction' AND amount = 0)"
        " OR (entry_type = 'reversal' AND amount <= 0)",
        name="entry_sign",
    ),
    ForeignKeyConstraint(
        ["accession", "test_code", "source_system"],
        ["billing_charges.accession", "billing_charges.test_code", "billing_charges.source_system"],
    ),
    Index("ix_billing_ledger_bill_key", "accession", "test_code", "source_system"),
)

unpriced_events = Table(
    "billing_unpriced_events", metadata,
    *_audit("event"),
    Column("accession", String(64), nullable=False),
    Column("test_code", String(64), nullable=False),
    Column("source_system", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("report_status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("service_time", TZ_TIME, nullable=False),
    Column("reviewed_at", TZ_TIME, nullable=True),
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

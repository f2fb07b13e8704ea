"""Billing tables: charges, ledger, unpriced events, consumed Kafka offsets.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(12, 2)
TZ_TIME = sa.DateTime(timezone=True)


def _audit(event_pk: bool) -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("event_id", sa.String(64), primary_key=event_pk, nullable=False),
        sa.Column("source_message_id", sa.String(255), nullable=False),
        sa.Column("kafka_topic", sa.String(249), nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("kafka_offset", sa.BigInteger, nullable=False),
        sa.Column("processed_at", TZ_TIME, nullable=False),
    ]


def _not_empty(table: str, *names: str) -> list[sa.CheckConstraint]:
    return [sa.CheckConstraint(f"length({n}) > 0", name=f"ck_{table}_{n}_not_empty") for n in names]


def upgrade() -> None:
    op.create_table(
        "billing_charges",
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("test_code", sa.String(64), nullable=False),
        sa.Column("source_system", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("price_effective_from", sa.Date, nullable=False),
        sa.Column("service_time", TZ_TIME, nullable=False),
        sa.Column("charge_event_id", sa.String(64), nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("latest_report_status", sa.String(32), nullable=False),
        *_audit(event_pk=False),
        sa.PrimaryKeyConstraint("accession", "test_code", "source_system", name="pk_billing_charges"),
        sa.CheckConstraint("status IN ('charged', 'reversed')", name="ck_billing_charges_status"),
        sa.CheckConstraint("amount >= 0", name="ck_billing_charges_amount_not_negative"),
        sa.CheckConstraint("length(currency) = 3", name="ck_billing_charges_currency_iso"),
        *_not_empty("billing_charges", "accession", "test_code", "source_system"),
    )
    op.create_table(
        "billing_ledger",
        *_audit(event_pk=True),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("test_code", sa.String(64), nullable=False),
        sa.Column("source_system", sa.String(64), nullable=False),
        sa.Column("entry_type", sa.String(16), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("report_status", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("service_time", TZ_TIME, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_billing_ledger"),
        sa.CheckConstraint(
            "(entry_type = 'charge' AND amount >= 0) OR (entry_type = 'correction' AND amount = 0)"
            " OR (entry_type = 'reversal' AND amount <= 0)",
            name="ck_billing_ledger_entry_sign",
        ),
        sa.ForeignKeyConstraint(
            ["accession", "test_code", "source_system"],
            ["billing_charges.accession", "billing_charges.test_code", "billing_charges.source_system"],
            name="fk_billing_ledger_billing_charges",
        ),
    )
    op.create_index("ix_billing_ledger_bill_key", "billing_ledger", ["accession", "test_code", "source_system"])
    op.create_table(
        "billing_unpriced_events",
        *_audit(event_pk=True),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("test_code", sa.String(64), nullable=False),
        sa.Column("source_system", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("report_status", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("service_time", TZ_TIME, nullable=False),
        sa.Column("reviewed_at", TZ_TIME, nullable=True),
        sa.PrimaryKeyConstraint("event_id", name="pk_billing_unpriced_events"),
        sa.CheckConstraint("reason IN ('not_on_price_list', 'no_price_on_service_date')",
                           name="ck_billing_unpriced_events_reason"),
        *_not_empty("billing_unpriced_events", "accession", "test_code", "source_system"),
    )
    op.create_index("ix_billing_unpriced_events_test_code", "billing_unpriced_events", ["test_code"])
    op.create_table(
        "billing_kafka_offsets",
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TZ_TIME, nullable=False),
        sa.PrimaryKeyConstraint("topic", "kafka_partition", name="pk_billing_kafka_offsets"),
        sa.CheckConstraint("next_offset >= 0", name="ck_billing_kafka_offsets_next_offset_not_negative"),
    )


def downgrade() -> None:
    op.drop_table("billing_kafka_offsets")
    op.drop_index("ix_billing_unpriced_events_test_code", table_name="billing_unpriced_events")
    op.drop_table("billing_unpriced_events")
    op.drop_index("ix_billing_ledger_bill_key", table_name="billing_ledger")
    op.drop_table("billing_ledger")
    op.drop_table("billing_charges")

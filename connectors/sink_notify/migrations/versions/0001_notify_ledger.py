"""Notification ledger: contacts, reports, events, messages (the outbox), consumed Kafka offsets.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


def upgrade() -> None:
    op.create_table(
        "notify_contacts",
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("phone", sa.String(64)),
        sa.Column("email", sa.String(320)),
        sa.Column("sms_consent", sa.Boolean, nullable=False),
        sa.Column("email_consent", sa.Boolean, nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("sms_blocked", sa.String(32)),
        sa.Column("email_blocked", sa.String(32)),
        sa.Column("contact_time", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name="pk_notify_contacts"),
    )
    op.create_table(
        "notify_reports",
        sa.Column("source_system", sa.String(64), nullable=False),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("last_status", sa.String(32), nullable=False),
        sa.Column("ready_message_id", sa.BigInteger),
        sa.Column("critical_alerted", sa.String(32)),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source_system", "accession", name="pk_notify_reports"),
    )
    op.create_table(
        "notify_events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("source_system", sa.String(64), nullable=False),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("report_status", sa.String(32), nullable=False),
        sa.Column("critical", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("message_id", sa.BigInteger),
        sa.Column("alert_message_id", sa.BigInteger),
        sa.Column("event_time", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("kafka_topic", sa.String(249), nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("kafka_offset", sa.BigInteger, nullable=False),
        sa.Column("raw_key", sa.LargeBinary),
        sa.Column("raw_value", sa.LargeBinary),
        sa.Column("raw_headers", sa.Text),
        sa.PrimaryKeyConstraint("event_id", name="pk_notify_events"),
    )
    op.create_index("ix_notify_events_message_id", "notify_events", ["message_id"])
    op.create_index("ix_notify_events_alert_message_id", "notify_events", ["alert_message_id"])
    op.create_index("ix_notify_events_received_at", "notify_events", ["received_at"])
    op.create_table(
        "notify_messages",
        sa.Column("id", ID, nullable=False, autoincrement=True),
        sa.Column("message_key", sa.String(36), nullable=False),
        sa.Column("audience", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("report_count", sa.Integer, nullable=False),
        sa.Column("accessions", sa.Text, nullable=False),
        sa.Column("channel", sa.String(8)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("due_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_attempt_at", sa.BigInteger),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("provider_message_id", sa.String(128)),
        sa.Column("error_code", sa.String(32)),
        sa.Column("dead_letter", sa.String(8)),
        sa.PrimaryKeyConstraint("id", name="pk_notify_messages"),
        sa.UniqueConstraint("message_key", name="uq_notify_messages_message_key"),
    )
    op.create_index("ix_notify_messages_state_due", "notify_messages", ["state", "due_at"])
    op.create_index("ix_notify_messages_patient_id", "notify_messages", ["patient_id", "state"])
    op.create_table(
        "notify_kafka_offsets",
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("topic", "kafka_partition", name="pk_notify_kafka_offsets"),
    )


def downgrade() -> None:
    for table in ("notify_kafka_offsets", "notify_messages", "notify_events", "notify_reports", "notify_contacts"):
        op.drop_table(table)

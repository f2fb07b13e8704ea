"""The notification ledger as SQLAlchemy Core tables.

The schema is created and changed only by the Alembic migrations in ``migrations/versions``
(a test checks that these definitions and the migrated database agree). Times are epoch
milliseconds (UTC). Contact details are the only PHI stored; messages are rendered at send
time and never stored, so the ledger holds no message text.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData, String, Table, Text

NAMING = {
    "pk": "pk_%(table_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# Contacts and consent, materialised from the `patients` topic; `*_blocked` is set by a provider's
# verdict (opted out, invalid number, landline) and outlives later contact records.
contacts = Table(
    "notify_contacts", metadata,
    Column("patient_id", String(128), primary_key=True),
    Column("phone", String(64)),
    Column("email", String(320)),
    Column("sms_consent", Boolean, nullable=False),
    Column("email_consent", Boolean, nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("language", String(16), nullable=False),
    Column("sms_blocked", String(32)),
    Column("email_blocked", String(32)),
    Column("contact_time", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# One row per report (accession): what the patient and the clinicians were told about it.
reports = Table(
    "notify_reports", metadata,
    Column("source_system", String(64), primary_key=True),
    Column("accession", String(64), primary_key=True),
    Column("patient_id", String(128), nullable=False),
    Column("last_status", String(32), nullable=False),
    Column("ready_message_id", BigInteger),
    Column("critical_alerted", String(32)),
    Column("updated_at", BigInteger, nullable=False),
)

# Every report event consumed, with the decision taken and where it came from (audit). The raw
# record is kept only while its message may still need the dead-letter queue.
events = Table(
    "notify_events", metadata,
    Column("event_id", String(64), primary_key=True),
    Column("source_system", String(64), nullable=False),
    Column("accession", String(64), nullable=False),
    Column("patient_id", String(128), nullable=False),
    Column("report_status", String(32), nullable=False),
    Column("critical", Boolean, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(32)),
    Column("message_id", BigInteger),
    Column("alert_message_id", BigInteger),
    Column("event_time", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("kafka_topic", String(249), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("raw_key", LargeBinary),
    Column("raw_value", LargeBinary),
    Column("raw_headers", Text),
)
Index("ix_notify_events_message_id", events.c.message_id)
Index("ix_notify_events_alert_message_id", events.c.alert_message_id)
Index("ix_notify_events_received_at", events.c.received_at)

# The outbox: one row per message to send. `message_key` is the provider's idempotency key.
# state: pending (waiting for its combine window) | deferred (quiet hours, caps, contact) | retrying
# | sending (intent recorded, provider not yet answered) | sent | suppressed | failed | unconfirmed.
messages = Table(
    "notify_messages", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_key", String(36), nullable=False, unique=True),
    Column("audience", String(16), nullable=False),  # patient | clinician
    Column("kind", String(32), nullable=False),
    Column("patient_id", String(128), nullable=False),
    Column("report_count", Integer, nullable=False),
    Column("accessions", Text, nullable=False),  # JSON list of [source_system, accession]
    Column("channel", String(8)),
    Column("state", String(16), nullable=False),
    Column("reason", String(32)),
    Column("due_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_attempt_at", BigInteger),
    Column("sent_at", BigInteger),
    Column("provider_message_id", String(128)),
    Column("error_code", String(32)),
    Column("dead_letter", String(8)),  # pending | done: a failed message's events still to dead-letter
)
Index("ix_notify_messages_state_due", messages.c.state, messages.c.due_at)
Index("ix_notify_messages_patient_id", messages.c.patient_id, messages.c.state)

kafka_offsets = Table(
    "notify_kafka_offsets", metadata,
    Column("topic", String(249), primary_key=True),
    Column("kafka_partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

OPEN_STATES = ("pending", "deferred", "retrying", "sending")

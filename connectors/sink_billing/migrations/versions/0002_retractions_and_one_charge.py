"""Retractions before a charge, equal-version corrections, event ids shared by tests, one charge per key.

* ``billing_charges``: status ``cancelled`` (a retraction seen before any charge: amount 0,
  no price or charge event, so those columns become nullable) and ``latest_event_time``
  (orders corrections of equal version), backfilled from the ledger row of the latest event.
* ``billing_ledger`` and ``billing_unpriced_events``: primary key (event_id, bill key),
  because a report event's id does not name the test.
* ``ux_billing_ledger_one_charge``: at most one ``charge`` row per bill key, whichever task writes it.

SQLite runs this through batch mode (a table copy); ``schema.upgrade`` turns foreign key
enforcement off around it, as SQLite's own procedure for changing a table requires.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ_TIME = sa.DateTime(timezone=True)
BILL_KEY = ["accession", "test_code", "source_system"]
PRICE_COLUMNS = {"currency": sa.String(3), "price_effective_from": sa.Date(), "service_time": TZ_TIME,
                 "charge_event_id": sa.String(64)}
CHARGED_OR_CANCELLED = (
    "(status <> 'cancelled' AND currency IS NOT NULL AND price_effective_from IS NOT NULL"
    " AND service_time IS NOT NULL AND charge_event_id IS NOT NULL)"
    " OR (status = 'cancelled' AND amount = 0 AND currency IS NULL AND price_effective_from IS NULL"
    " AND service_time IS NULL AND charge_event_id IS NULL)"
)
ONE_CHARGE_INDEX = "ux_billing_ledger_one_charge"
CHARGE_ROWS = sa.text("entry_type = 'charge'")

# Every change of a charge row wrote a ledger row for the same event, whose service_time is the event's time.
BACKFILL_LATEST_EVENT_TIME = """
UPDATE billing_charges SET latest_event_time = COALESCE(
    (SELECT l.service_time FROM billing_ledger l
     WHERE l.event_id = billing_charges.event_id AND l.accession = billing_charges.accession
       AND l.test_code = billing_charges.test_code AND l.source_system = billing_charges.source_system),
    billing_charges.service_time)
"""


def upgrade() -> None:
    op.add_column("billing_charges", sa.Column("latest_event_time", TZ_TIME, nullable=True))
    op.execute(BACKFILL_LATEST_EVENT_TIME)
    with op.batch_alter_table("billing_charges") as batch:
        batch.alter_column("latest_event_time", existing_type=TZ_TIME, nullable=False)
        for name, type_ in PRICE_COLUMNS.items():
            batch.alter_column(name, existing_type=type_, nullable=True)
        batch.drop_constraint("ck_billing_charges_status", type_="check")
        batch.create_check_constraint("ck_billing_charges_status", "status IN ('charged', 'reversed', 'cancelled')")
        batch.create_check_constraint("ck_billing_charges_charged_or_cancelled", CHARGED_OR_CANCELLED)
    for table in ("billing_ledger", "billing_unpriced_events"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["event_id", *BILL_KEY])
    # After the ledger's batch copy: a copy would not keep the index's WHERE clause on SQLite.
    op.create_index(ONE_CHARGE_INDEX, "billing_ledger", BILL_KEY, unique=True,
                    postgresql_where=CHARGE_ROWS, sqlite_where=CHARGE_ROWS)


def downgrade() -> None:
    """Fails (and changes nothing) when two tests of one report share an event id: 0001 cannot hold them."""
    op.drop_index(ONE_CHARGE_INDEX, table_name="billing_ledger")
    for table in ("billing_ledger", "billing_unpriced_events"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["event_id"])
    # A cancelled row has no ledger rows (it never charged); 0001 cannot remember retractions.
    op.execute("DELETE FROM billing_charges WHERE status = 'cancelled'")
    with op.batch_alter_table("billing_charges") as batch:
        batch.drop_constraint("ck_billing_charges_charged_or_cancelled", type_="check")
        batch.drop_constraint("ck_billing_charges_status", type_="check")
        batch.create_check_constraint("ck_billing_charges_status", "status IN ('charged', 'reversed')")
        for name, type_ in PRICE_COLUMNS.items():
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.drop_column("latest_event_time")

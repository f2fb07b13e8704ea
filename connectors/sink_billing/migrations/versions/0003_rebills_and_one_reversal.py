"""Rebills, and at most one reversal per charge.

* ``billing_ledger.entry_type`` may be ``rebill``: a new positive charge after a reversal,
  when the test is released again with a newer version (``ck_billing_ledger_entry_sign`` widens).
* ``billing_ledger.charge_event_id``: the charge or rebill a row belongs to (a charge or
  rebill names itself), backfilled from the bill key's charge row (before 0003 a bill key
  has at most one). Nullable, so 0002-era tasks still running during a rolling upgrade
  can go on inserting ledger rows.
* ``ux_billing_ledger_one_reversal``: at most one reversal per charge. On a database that
  already holds a charge reversed twice (two tasks raced before the writer's
  compare-and-set) creating it fails; ``schema.migrate_or_retry`` names the fix.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LEDGER = "billing_ledger"
BILL_KEY = ["accession", "test_code", "source_system"]
ENTRY_SIGN = "ck_billing_ledger_entry_sign"
SIGN_0002 = (
    "(entry_type = 'charge' AND amount >= 0) OR (entry_type = 'correction' AND amount = 0)"
    " OR (entry_type = 'reversal' AND amount <= 0)"
)
SIGN_0003 = (
    "(entry_type IN ('charge', 'rebill') AND amount >= 0) OR (entry_type = 'correction' AND amount = 0)"
    " OR (entry_type = 'reversal' AND amount <= 0)"
)
ONE_CHARGE_INDEX = "ux_billing_ledger_one_charge"
ONE_REVERSAL_INDEX = "ux_billing_ledger_one_reversal"

BACKFILL_CHARGE_EVENT_ID = """
UPDATE billing_ledger SET charge_event_id = (
    SELECT c.event_id FROM billing_ledger c
    WHERE c.entry_type = 'charge' AND c.accession = billing_ledger.accession
      AND c.test_code = billing_ledger.test_code AND c.source_system = billing_ledger.source_system)
"""


def _one_charge_index() -> None:
    op.create_index(ONE_CHARGE_INDEX, LEDGER, BILL_KEY, unique=True,
                    postgresql_where=sa.text("entry_type = 'charge'"), sqlite_where=sa.text("entry_type = 'charge'"))


@contextmanager
def _ledger_changes() -> Iterator[Any]:
    """Alter the ledger; on SQLite that copies the table, and the partial index is re-created after the
    copy (as in 0002: not every Alembic/SQLAlchemy version carries its WHERE clause over)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.drop_index(ONE_CHARGE_INDEX, table_name=LEDGER)
    with op.batch_alter_table(LEDGER) as batch:
        yield batch
    if sqlite:
        _one_charge_index()


def upgrade() -> None:
    op.add_column(LEDGER, sa.Column("charge_event_id", sa.String(64), nullable=True))
    op.execute(BACKFILL_CHARGE_EVENT_ID)
    with _ledger_changes() as batch:
        batch.drop_constraint(ENTRY_SIGN, type_="check")
        batch.create_check_constraint(ENTRY_SIGN, SIGN_0003)
    op.create_index(ONE_REVERSAL_INDEX, LEDGER, [*BILL_KEY, "charge_event_id"], unique=True,
                    postgresql_where=sa.text("entry_type = 'reversal'"),
                    sqlite_where=sa.text("entry_type = 'reversal'"))


def downgrade() -> None:
    """Fails (and changes nothing) when the ledger holds a rebill: 0002 cannot hold one."""
    op.drop_index(ONE_REVERSAL_INDEX, table_name=LEDGER)
    with _ledger_changes() as batch:
        batch.drop_constraint(ENTRY_SIGN, type_="check")
        batch.create_check_constraint(ENTRY_SIGN, SIGN_0002)
        batch.drop_column("charge_event_id")

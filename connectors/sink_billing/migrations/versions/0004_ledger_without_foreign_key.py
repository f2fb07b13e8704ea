"""The ledger without its foreign key to billing_charges and without the plain bill-key index.

Both cost every flush (a lookup into billing_charges per ledger row, and one more
index to maintain) and guard nothing the writer does not already keep:

* every ledger row is inserted in the same transaction as its bill key's charge row,
  which the compare-and-set has just written (a charge, rebill, correction or reversal
  always changes the charge state), so the row it would refer to is there;
* charge rows are not deleted by the sink; ``billing_charges_keep_rows`` refuses what the
  foreign key refused, a DELETE (or, on PostgreSQL, a TRUNCATE) of charge rows that
  ledger rows refer to -- the one way the foreign key could have fired;
* lookups of a bill key's ledger rows by charge or reversal use the partial unique
  indexes, and nothing queries the ledger by bill key otherwise.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LEDGER = "billing_ledger"
BILL_KEY = ["accession", "test_code", "source_system"]
FOREIGN_KEY = "fk_billing_ledger_billing_charges"
BILL_KEY_INDEX = "ix_billing_ledger_bill_key"
ONE_CHARGE_INDEX = "ux_billing_ledger_one_charge"
ONE_REVERSAL_INDEX = "ux_billing_ledger_one_reversal"
KEEP_ROWS = "billing_charges_keep_rows"
REFUSAL = "billing_charges rows are kept while billing_ledger rows refer to them"
JOINED = ("l.accession = c.accession AND l.test_code = c.test_code AND l.source_system = c.source_system")

# What the foreign key refused, refused the same way: deleting (or truncating) charge rows that ledger
# rows refer to. Deleting the ledger's rows first, or both tables' in one TRUNCATE, still works.
POSTGRESQL_KEEP_ROWS = [
    f"""CREATE FUNCTION {KEEP_ROWS}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM 1 FROM deleted_charges c JOIN billing_ledger l ON {JOINED} LIMIT 1;
            ELSE
                PERFORM 1 FROM billing_ledger LIMIT 1;
            END IF;
            IF FOUND THEN
                RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NULL;
        END $$""",
    f"CREATE TRIGGER {KEEP_ROWS} AFTER DELETE ON billing_charges REFERENCING OLD TABLE AS deleted_charges "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {KEEP_ROWS}()",
    f"CREATE TRIGGER {KEEP_ROWS}_truncate AFTER TRUNCATE ON billing_charges "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {KEEP_ROWS}()",
]
SQLITE_KEEP_ROWS = [
    f"CREATE TRIGGER {KEEP_ROWS} BEFORE DELETE ON billing_charges FOR EACH ROW WHEN EXISTS "
    f"(SELECT 1 FROM billing_ledger l WHERE {JOINED.replace('c.', 'OLD.')}) "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


@contextmanager
def _ledger_copy() -> Iterator[Any]:
    """SQLite cannot drop or add a constraint: batch mode copies the table. Its partial indexes are
    re-created after the copy (as in 0002 and 0003: a copy may lose their WHERE clause)."""
    for index in (ONE_CHARGE_INDEX, ONE_REVERSAL_INDEX):
        op.drop_index(index, table_name=LEDGER)
    with op.batch_alter_table(LEDGER, recreate="always") as batch:
        yield batch
    op.create_index(ONE_CHARGE_INDEX, LEDGER, BILL_KEY, unique=True, sqlite_where=sa.text("entry_type = 'charge'"))
    op.create_index(ONE_REVERSAL_INDEX, LEDGER, [*BILL_KEY, "charge_event_id"], unique=True,
                    sqlite_where=sa.text("entry_type = 'reversal'"))


def upgrade() -> None:
    op.drop_index(BILL_KEY_INDEX, table_name=LEDGER)
    if _sqlite():
        with _ledger_copy() as batch:
            batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    else:
        op.drop_constraint(FOREIGN_KEY, LEDGER, type_="foreignkey")
    for statement in SQLITE_KEEP_ROWS if _sqlite() else POSTGRESQL_KEEP_ROWS:
        op.execute(statement)


def downgrade() -> None:
    if _sqlite():
        op.execute(f"DROP TRIGGER {KEEP_ROWS}")
        with _ledger_copy() as batch:
            batch.create_foreign_key(FOREIGN_KEY, "billing_charges", BILL_KEY, BILL_KEY)
    else:
        op.execute(f"DROP TRIGGER {KEEP_ROWS} ON billing_charges")
        op.execute(f"DROP TRIGGER {KEEP_ROWS}_truncate ON billing_charges")
        op.execute(f"DROP FUNCTION {KEEP_ROWS}()")
        op.create_foreign_key(FOREIGN_KEY, LEDGER, "billing_charges", BILL_KEY, BILL_KEY)
    op.create_index(BILL_KEY_INDEX, LEDGER, BILL_KEY)

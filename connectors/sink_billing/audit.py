"""Read-side checks of the billing database, for tests and operators.

``charge_counts`` answers the exactly-once question per bill key: how many
charge, rebill and reversal ledger rows exist. A correct history has at most one
charge, every reversal reverses a live charge and every rebill follows a reversal,
so there is never more than one live charge. Crash tests reuse it: after any crash
and restart every key must still pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from connectors.sink_billing import tables
from connectors.sink_billing.events import BillKey


@dataclass(frozen=True)
class ChargeCounts:
    charges: int
    corrections: int
    reversals: int
    net_amount: Decimal
    rebills: int = 0

    @property
    def live_charges(self) -> int:
        return self.charges + self.rebills - self.reversals

    @property
    def exactly_once(self) -> bool:
        """One charge at most; each reversal reverses a live charge, each rebill follows a reversal."""
        return (self.charges <= 1 and self.rebills <= self.reversals and self.live_charges in (0, 1)
                and (self.charges == 1 or self.rebills == 0))


def charge_counts(engine: Engine) -> dict[BillKey, ChargeCounts]:
    """Ledger rows per bill key, by entry type, with the net billed amount."""
    t = tables.ledger

    def count(entry_type: str):  # type: ignore[no-untyped-def]
        return func.sum(case((t.c.entry_type == entry_type, 1), else_=0))

    query = select(t.c.source_system, t.c.accession, t.c.test_code, count("charge"), count("correction"),
                   count("reversal"), func.sum(t.c.amount), count("rebill")).group_by(
        t.c.source_system, t.c.accession, t.c.test_code)
    with engine.connect() as conn:
        return {
            BillKey(row[0], row[1], row[2]): ChargeCounts(int(row[3]), int(row[4]), int(row[5]), Decimal(row[6]),
                                                          int(row[7]))
            for row in conn.execute(query)
        }


def table_snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every billing table, sorted: compare two snapshots to prove nothing changed."""
    snapshot = {}
    with engine.connect() as conn:
        for table in (tables.charges, tables.ledger, tables.unpriced_events, tables.kafka_offsets):
            rows = conn.execute(select(table)).all()
            snapshot[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return snapshot

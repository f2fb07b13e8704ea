"""Settings of the billing sink (environment variables, see ``common.config``).

The runtime decides when to flush (``FLUSH_MAX_RECORDS`` etc.); every flush is one
database transaction holding the billing rows and the consumed offsets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common import SinkSettings
from common.database import DatabaseUrl

EXAMPLE_PRICE_LIST = str(Path(__file__).resolve().parent / "price_list.example.csv")


class BillingSettings(SinkSettings):
    """Where the billing database is, which price list applies and how rows are written."""

    topics: str = Field("lab-reports", description="Comma-separated topics of LabReport events")
    billing_database_url: DatabaseUrl = Field(
        "sqlite:///billing.db",
        description="SQLAlchemy URL: postgresql+psycopg://user@host/db in production, sqlite:///file embedded",
    )
    billing_price_list: str = Field(EXAMPLE_PRICE_LIST, description="CSV: test_code,price,currency,"
                                    "effective_from,effective_to (the shipped example by default)")
    billing_migrate_on_start: bool = Field(True, description="run the Alembic migrations when the task starts")
    billing_state_cache_max_keys: int = Field(
        200_000, ge=1, description="PostgreSQL: charge states kept in memory between batches (about 0.5 KB each); "
                                   "past it the memory is emptied and refilled from the database")
    # Measured with bench/billing_db.py; see README.md "Throughput".
    billing_write_method: Literal["multirow", "copy"] = Field(
        "copy", description="PostgreSQL only: multi-row INSERT ... ON CONFLICT, or COPY into a temp table + merge"
    )


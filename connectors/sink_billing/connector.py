"""The billing sink: LabReport events into the billing database as charges and reversals."""

from __future__ import annotations

from datetime import datetime, timezone

from common import ConnectorSpec, WorkerSettings
from common.database import make_engine
from common.offset_reset import SqlOffsetStore
from connectors.sink_billing import tables
from connectors.sink_billing.schema import migrate
from connectors.sink_billing.settings import BillingSettings
from connectors.sink_billing.task import make_task

LAB_REPORT = "com.drdangslab.events.LabReport"


def offset_store(settings: WorkerSettings) -> SqlOffsetStore:
    """The offsets the task resumes from: stored with the charges, in the billing database."""
    assert isinstance(settings, BillingSettings)
    return SqlOffsetStore(make_engine(str(settings.billing_database_url)), tables.kafka_offsets,
                          lambda: datetime.now(timezone.utc), "billing database")


CONNECTOR = ConnectorSpec(
    name="sink-billing",
    kind="sink",
    settings=BillingSettings,
    task_factory=make_task,  # type: ignore[arg-type]
    description="Charges, corrections and reversals into the billing database, exactly once",
    default_reader_schema=LAB_REPORT,  # every configured topic carries LabReports
    migrate=migrate,
    offset_store=offset_store,
)

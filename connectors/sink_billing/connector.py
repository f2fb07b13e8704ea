"""The billing sink: LabReport events into the billing database as charges and reversals."""

from __future__ import annotations

from common.connector import ConnectorSpec
from connectors.sink_billing.schema import migrate
from connectors.sink_billing.settings import BillingSettings
from connectors.sink_billing.task import make_task

LAB_REPORT = "com.drdangslab.events.LabReport"


CONNECTOR = ConnectorSpec(
    name="sink-billing",
    kind="sink",
    settings=BillingSettings,
    task_factory=make_task,  # type: ignore[arg-type]
    description="Charges, corrections and reversals into the billing database, exactly once",
    default_reader_schema=LAB_REPORT,  # every configured topic carries LabReports
    migrate=migrate,
)

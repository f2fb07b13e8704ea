"""The billing sink: LabReport events into the billing database as charges and reversals."""

from __future__ import annotations

from common.connector import ConnectorSpec
from connectors.sink_billing.schema import migrate
from connectors.sink_billing.settings import BillingSettings
from connectors.sink_billing.task import make_task

LAB_REPORT = "com.drdangslab.events.LabReport"


class _LabReportForEveryTopic(dict[str, str]):
    """Reader schemas: every topic the sink is configured for (TOPICS) carries LabReports.

    The spec is built at import, before TOPICS is read; the runtime looks reader
    schemas up with ``.get(topic)``, so answer LabReport for any topic.
    """

    def get(self, topic: str, default: str | None = None) -> str:  # type: ignore[override]
        return LAB_REPORT

    def __missing__(self, topic: str) -> str:
        return LAB_REPORT


CONNECTOR = ConnectorSpec(
    name="sink-billing",
    kind="sink",
    settings=BillingSettings,
    task_factory=make_task,  # type: ignore[arg-type]
    description="Charges, corrections and reversals into the billing database, exactly once",
    reader_schemas=_LabReportForEveryTopic({"lab-reports": LAB_REPORT}),
    migrate=migrate,
)

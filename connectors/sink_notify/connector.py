"""The notification sink: "your results are ready" by SMS and e-mail, once per report."""

from __future__ import annotations

from common.connector import ConnectorSpec
from connectors.sink_notify.report import main as report_main
from connectors.sink_notify.schema import migrate
from connectors.sink_notify.settings import NotifySettings
from connectors.sink_notify.task import make_task

CONNECTOR = ConnectorSpec(
    name="sink-notify",
    kind="sink",
    settings=NotifySettings,
    task_factory=make_task,  # type: ignore[arg-type]
    description="Results-ready SMS and e-mail to patients, critical alerts to on-call, exactly once",
    migrate=migrate,
    tool=report_main,
)

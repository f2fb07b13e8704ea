"""The notification sink: "your results are ready" by SMS and e-mail, once per report."""

from __future__ import annotations

from common import ConnectorSpec, WorkerSettings
from common.offset_reset import SqlOffsetStore
from connectors.sink_notify import tables
from connectors.sink_notify.report import main as report_main
from connectors.sink_notify.schema import ledger_engine, migrate
from connectors.sink_notify.sender import now_ms
from connectors.sink_notify.settings import NotifySettings
from connectors.sink_notify.task import make_task

def offset_store(settings: WorkerSettings) -> SqlOffsetStore:
    """The offsets the task resumes from: stored with the ledger's rows."""
    assert isinstance(settings, NotifySettings)
    return SqlOffsetStore(ledger_engine(str(settings.notify_database_url)), tables.kafka_offsets, now_ms,
                          "notify ledger")


CONNECTOR = ConnectorSpec(
    name="sink-notify",
    kind="sink",
    settings=NotifySettings,
    task_factory=make_task,  # type: ignore[arg-type]
    description="Results-ready SMS and e-mail to patients, critical alerts to on-call, exactly once",
    migrate=migrate,
    tool=report_main,
    offset_store=offset_store,
)

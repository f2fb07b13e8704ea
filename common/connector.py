"""What a connector package declares so the runtime and the CLI can run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from common.config import WorkerSettings
from common.offset_reset import SinkOffsetStore, SourceOffsetRules
from common.task import SinkTask, SourceTask


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector: its type name, its settings class and how to build its task."""

    name: str
    kind: Literal["source", "sink"]
    settings: type[WorkerSettings]
    task_factory: Callable[[WorkerSettings], SourceTask | SinkTask]
    description: str = ""
    # Sink only: topic -> Avro full name the task reads values as (schema resolution);
    # topics not listed use ``default_reader_schema`` (None: values as written).
    reader_schemas: dict[str, str] = field(default_factory=dict)
    default_reader_schema: str | None = None
    # Brings the connector's own storage schema up to date (`labconnect migrate <name>`).
    migrate: Callable[[WorkerSettings], None] | None = None
    # The connector's own operator command (`labconnect notify ...` for sink-notify): argv -> exit code.
    tool: Callable[[list[str]], int] | None = None
    # Source: backfill a past time window under the connector's name (`labconnect replay <name> ...`): argv -> exit code.
    replay: Callable[[list[str]], int] | None = None
    # Sink whose task keeps its own offsets (``SinkTask.open`` returns them): `labconnect offsets`
    # reads and moves them beside the consumer group's, so a reset changes where it resumes.
    offset_store: Callable[[WorkerSettings], SinkOffsetStore] | None = None
    # Source: what `labconnect offsets reset` means for each of its source partitions
    # (without it, only --to-earliest, which removes the source offsets).
    source_offsets: Callable[[WorkerSettings], SourceOffsetRules] | None = None

    def reader_schema(self, topic: str) -> str | None:
        return self.reader_schemas.get(topic, self.default_reader_schema)


# The connectors the CLI knows, by type name -> module that defines `CONNECTOR`.
REGISTRY: dict[str, str] = {
    "source-lis": "connectors.source_lis.connector",
    "sink-notify": "connectors.sink_notify.connector",
    "sink-billing": "connectors.sink_billing.connector",
    "sink-warehouse": "connectors.sink_warehouse.connector",
}


def load_connector(name: str) -> ConnectorSpec:
    import importlib

    from common.errors import ConfigError

    try:
        module = importlib.import_module(REGISTRY[name])
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("connectors."):
            raise
        raise ConfigError([f"connector {name} is not available in this build"]) from None
    spec = module.CONNECTOR
    assert isinstance(spec, ConnectorSpec)
    return spec

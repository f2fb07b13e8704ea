"""The API a connector package is written against.

Tasks, records, the connector declaration, settings base classes and the errors
connectors raise. The names are loaded on first use, so importing any
``common`` module stays cheap; runtime internals live in their own modules.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.config import SinkSettings, SourceSettings, WorkerSettings
    from common.connector import ConnectorSpec
    from common.errors import ConfigError, ConnectorError, PermanentError, RetriableError
    from common.records import DeadLetter, Headers, SinkRecord, SourceRecord
    from common.task import SinkTask, SinkTaskContext, SourceTask, SourceTaskContext, TopicPartition

__all__ = [
    "ConfigError",
    "ConnectorError",
    "ConnectorSpec",
    "DeadLetter",
    "Headers",
    "PermanentError",
    "RetriableError",
    "SinkRecord",
    "SinkSettings",
    "SinkTask",
    "SinkTaskContext",
    "SourceRecord",
    "SourceSettings",
    "SourceTask",
    "SourceTaskContext",
    "TopicPartition",
    "WorkerSettings",
]

# name -> the module that defines it
_MODULES = {
    "SinkSettings": "common.config",
    "SourceSettings": "common.config",
    "WorkerSettings": "common.config",
    "ConnectorSpec": "common.connector",
    "ConfigError": "common.errors",
    "ConnectorError": "common.errors",
    "PermanentError": "common.errors",
    "RetriableError": "common.errors",
    "DeadLetter": "common.records",
    "Headers": "common.records",
    "SinkRecord": "common.records",
    "SourceRecord": "common.records",
    "SinkTask": "common.task",
    "SinkTaskContext": "common.task",
    "SourceTask": "common.task",
    "SourceTaskContext": "common.task",
    "TopicPartition": "common.task",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

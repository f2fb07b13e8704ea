"""The warehouse sink: Kafka topics into an S3 (or local) data warehouse as Parquet."""

from __future__ import annotations

from common import ConnectorSpec
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.task import make_task

CONNECTOR = ConnectorSpec(
    name="sink-warehouse",
    kind="sink",
    settings=WarehouseSettings,
    task_factory=make_task,
    description="Topics into S3 as Hive-partitioned Parquet (or Avro/JSON Lines), exactly once",
)

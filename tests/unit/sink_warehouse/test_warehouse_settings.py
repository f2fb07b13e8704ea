from __future__ import annotations

import pytest

from common.config import load_settings
from common.errors import ConfigError
from connectors.sink_warehouse.connector import CONNECTOR
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.task import WarehouseSinkTask


def test_defaults_run_the_embedded_demo() -> None:
    settings = load_settings(WarehouseSettings, {})
    assert settings.topic_list == ["lab-results"]
    assert settings.warehouse_url == "file://./warehouse" and settings.warehouse_format == "parquet"
    assert settings.parquet_compression == "zstd" and settings.s3_part_size_bytes == 25 * 1024 * 1024


def test_s3_endpoint_comes_from_S3_ENDPOINT_URL() -> None:
    settings = load_settings(WarehouseSettings, {"S3_ENDPOINT_URL": "http://minio:9000",
                                                 "WAREHOUSE_URL": "s3://lake/raw"})
    assert settings.s3_endpoint_url == "http://minio:9000"


def test_bad_settings_name_every_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(WarehouseSettings, {"WAREHOUSE_TIMEZONE": "Mars/Olympus", "S3_PART_SIZE_BYTES": "1024",
                                          "WAREHOUSE_URL": "ftp://x", "S3_SSE": "rot13"})
    assert {p.split(":")[0] for p in caught.value.problems} == {
        "WAREHOUSE_TIMEZONE", "S3_PART_SIZE_BYTES", "WAREHOUSE_URL", "S3_SSE"}


def test_connector_spec_builds_the_task() -> None:
    assert CONNECTOR.name == "sink-warehouse" and CONNECTOR.kind == "sink"
    assert isinstance(CONNECTOR.task_factory(load_settings(WarehouseSettings, {})), WarehouseSinkTask)

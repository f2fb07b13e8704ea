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


def test_a_kms_key_without_sse_kms_is_a_bad_setting_naming_both() -> None:
    for sse in ("", "AES256"):
        with pytest.raises(ConfigError, match="S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms"):
            load_settings(WarehouseSettings, {"S3_SSE": sse, "S3_SSE_KMS_KEY_ID": "alias/lab"})
    assert load_settings(WarehouseSettings, {"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "alias/lab"}) \
        .s3_sse_kms_key_id == "alias/lab"


def test_connector_spec_builds_the_task() -> None:
    assert CONNECTOR.name == "sink-warehouse" and CONNECTOR.kind == "sink"
    assert isinstance(CONNECTOR.task_factory(load_settings(WarehouseSettings, {})), WarehouseSinkTask)


def test_s3_requests_are_bounded_by_the_timeout_and_attempt_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    settings = load_settings(WarehouseSettings, {"WAREHOUSE_URL": "s3://lake/raw", "S3_REGION": "us-east-1",
                                                 "S3_CONNECT_TIMEOUT_MS": "2000", "S3_READ_TIMEOUT_MS": "15000"})
    task = WarehouseSinkTask(settings)
    task.start(None)  # type: ignore[arg-type]  # builds the S3 client; no request is made
    config = task.storage.client.meta.config  # type: ignore[union-attr]
    assert (config.connect_timeout, config.read_timeout) == (2, 15)
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 3}  # the first try included
    task.stop()


def test_round_time_bound_stays_below_the_default_max_poll_interval() -> None:
    s3 = load_settings(WarehouseSettings, {"WAREHOUSE_URL": "s3://lake/raw"})
    # 90 s deadline + 3 attempts x (5 s connect + 30 s read) + 2 backoffs of at most 25 s
    assert s3.round_time_bound_ms == 90_000 + 3 * 35_000 + 2 * 25_000 < 300_000
    assert load_settings(WarehouseSettings, {}).round_time_bound_ms == 90_000  # file://: no request timeouts

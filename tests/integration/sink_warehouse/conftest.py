"""The warehouse task against moto's S3 server (``s3_endpoint``/``s3_client``/``bucket`` come
from tests/conftest.py). Record helpers are shared with the unit tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# The record helpers live beside the unit tests; load them by path when the unit
# folder is not on sys.path (running only the integration tests).
if "warehouse_records" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "warehouse_records", Path(__file__).resolve().parents[2] / "unit" / "sink_warehouse" / "warehouse_records.py")
    assert _spec and _spec.loader
    sys.modules["warehouse_records"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["warehouse_records"])

from warehouse_records import FakeContext, RecordFactory, records_factory  # noqa: E402


@pytest.fixture
def context() -> FakeContext:
    return FakeContext()


@pytest.fixture
def make_records(context: FakeContext) -> RecordFactory:
    return records_factory(context)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto accepts any credentials; the task finds them through boto3's usual chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


@pytest.fixture
def download(s3_client, bucket: str, tmp_path: Path) -> Callable[[], Path]:  # type: ignore[no-untyped-def]
    """Mirror the bucket into a directory, keys as paths (DuckDB's httpfs is not available offline)."""

    def fetch() -> Path:
        root = tmp_path / "mirror"
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                target = root / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3_client.download_file(bucket, obj["Key"], str(target))
        return root

    return fetch

"""sink-warehouse as a real process against the real broker and moto's S3 server,
killed with SIGKILL at the dangerous moments; DuckDB counts the result."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from common.dlq import HEADER_PREFIX
from common.serde import SingleObjectSerde
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import LAB_RESULT, committed_offsets, consume_all, produce, wait_for
from tests.support.test_connectors import lab_result

HOUR_MS = 3_600_000
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _record(n: int, spread_hours: int = 3) -> dict[str, Any]:
    value = lab_result(n, f"p{n % 13}")
    value["timestamp"] = BASE_MS + (n % spread_hours) * HOUR_MS + n
    return value


def _s3_env(runtime: RuntimeEnv, s3_endpoint: str, bucket: str, topic: str, name: str) -> dict[str, str]:
    return {"TOPICS": topic, "CONNECTOR_NAME": name, "WAREHOUSE_URL": f"s3://{bucket}/lab",
            "S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "FLUSH_IDLE_MS": "1000"}


def _download(s3_client: Any, bucket: str, target: Path) -> list[str]:
    keys = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            path = target / item["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, item["Key"], str(path))
            keys.append(item["Key"])
    return keys


def _count(root: Path, reader: str = "read_parquet", pattern: str = "**/*.parquet") -> tuple[int, int]:
    """(rows, distinct topic/partition/offset) as DuckDB sees the warehouse."""
    relation = f"{reader}('{root}/{pattern}', hive_partitioning=true, union_by_name=true)"
    if reader == "read_json":
        relation = f"read_json('{root}/{pattern}', hive_partitioning=true, union_by_name=true, format='newline_delimited')"
    rows, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (_kafka_topic, _kafka_partition, _kafka_offset)) FROM {relation}"
    ).fetchall()[0]
    return int(rows), int(distinct)


def _committed_total(runtime: RuntimeEnv, name: str, topic: str) -> int:
    return sum(max(o, 0) for o in committed_offsets(runtime.bootstrap, f"connect-{name}", topic).values())


def test_crash_between_upload_and_commit_leaves_no_duplicate_rows(
        runtime: RuntimeEnv, make_topic: Callable[..., str], s3_endpoint: str, s3_client: Any, bucket: str,
        tmp_path: Path) -> None:
    topic = make_topic("lab-results", partitions=3)
    produce(runtime.bootstrap, topic, ((f"p{n % 13}", _record(n)) for n in range(3000)))
    name = f"wh-{topic}"
    env = _s3_env(runtime, s3_endpoint, bucket, topic, name)
    crashing = runtime.start_real("sink-warehouse", "first", CRASH_AFTER_FLUSHES=1, FLUSH_MAX_RECORDS=1000, **env)
    assert crashing.wait(90) == -signal.SIGKILL
    uploaded_before = s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert uploaded_before > 0 and _committed_total(runtime, name, topic) == 0

    # Different cut points after the restart: the first object per time partition is rewritten.
    runtime.start_real("sink-warehouse", "second", FLUSH_MAX_RECORDS=700, **env)
    wait_for(lambda: _committed_total(runtime, name, topic) == 3000, 90, "all offsets committed")
    keys = [k for k in _download(s3_client, bucket, tmp_path) if k.endswith(".parquet")]
    assert {k.split("/")[3] for k in keys} == {"hour=00", "hour=01", "hour=02"}
    assert _count(tmp_path) == (3000, 3000)


def test_crash_in_the_middle_of_a_multipart_upload_loses_and_duplicates_nothing(
        runtime: RuntimeEnv, make_topic: Callable[..., str], s3_endpoint: str, s3_client: Any, bucket: str,
        tmp_path: Path) -> None:
    topic = make_topic("lab-results")
    total = 14_000  # about 8 MiB of JSON Lines in one hour: two 5 MiB parts
    produce(runtime.bootstrap, topic, ((f"p{n % 13}", _record(n, spread_hours=1)) for n in range(total)))
    name = f"mp-{topic}"
    env = {**_s3_env(runtime, s3_endpoint, bucket, topic, name), "WAREHOUSE_FORMAT": "jsonl",
           "S3_PART_SIZE_BYTES": str(5 * 1024 * 1024), "FLUSH_MAX_RECORDS": str(total), "FLUSH_IDLE_MS": "3000"}
    crashing = runtime.start_real("sink-warehouse", "first", CRASH_AFTER_UPLOAD_PARTS=1, **env)
    assert crashing.wait(120) == -signal.SIGKILL
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0, "no half object is visible"
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the upload was in flight"

    runtime.start_real("sink-warehouse", "second", **env)
    wait_for(lambda: _committed_total(runtime, name, topic) == total, 120, "all offsets committed")
    _download(s3_client, bucket, tmp_path)
    assert _count(tmp_path, "read_json", "**/*.jsonl") == (total, total)


def test_idle_partition_is_flushed_in_time_and_a_crash_right_after_is_still_exactly_once(
        runtime: RuntimeEnv, make_topic: Callable[..., str], s3_endpoint: str, s3_client: Any, bucket: str,
        tmp_path: Path) -> None:
    topic = make_topic("lab-results", partitions=2)
    name = f"idle-{topic}"
    env = {**_s3_env(runtime, s3_endpoint, bucket, topic, name), "FLUSH_IDLE_MS": "1000",
           "FLUSH_MAX_AGE_MS": "600000", "FLUSH_MAX_RECORDS": "100000"}
    crashing = runtime.start_real("sink-warehouse", "first", CRASH_AFTER_FLUSHES=1, **env)
    wait_for(lambda: "partitions assigned" in runtime.log("first"), 60, "assignment")
    produced_at = time.monotonic()
    produce(runtime.bootstrap, topic, ((f"p{n % 13}", _record(n)) for n in range(50)))
    assert crashing.wait(30) == -signal.SIGKILL
    flushed_after = time.monotonic() - produced_at
    assert flushed_after < 1.0 + 3.0, f"idle flush took {flushed_after:.1f}s"
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0

    runtime.start_real("sink-warehouse", "second", **env)
    produce(runtime.bootstrap, topic, ((f"p{n % 13}", _record(n)) for n in range(50, 120)))
    wait_for(lambda: _committed_total(runtime, name, topic) == 120, 60, "all offsets committed")
    _download(s3_client, bucket, tmp_path)
    assert _count(tmp_path) == (120, 120)


def test_a_corrupt_value_goes_to_the_dlq_and_its_neighbours_are_written_once(
        runtime: RuntimeEnv, make_topic: Callable[..., str], s3_endpoint: str, s3_client: Any, bucket: str,
        tmp_path: Path) -> None:
    # Framing and writer schema are fine, so the runtime hands the value on; the body is cut
    # short, so the sink's bulk decode of its run fails and the record must be isolated.
    topic = make_topic("lab-results")
    good = SingleObjectSerde().encode(topic, LAB_RESULT, _record(250))
    corrupt = good[:40]
    values: list[tuple[str | None, dict[str, Any] | bytes | None]] = [(f"p{n % 13}", _record(n)) for n in range(500)]
    values[250] = ("p3", corrupt)
    produce(runtime.bootstrap, topic, values)
    name = f"poison-{topic}"
    runtime.start_real("sink-warehouse", "sink", FLUSH_MAX_RECORDS=500,
                       **_s3_env(runtime, s3_endpoint, bucket, topic, name))
    wait_for(lambda: _committed_total(runtime, name, topic) == 500, 90, "offsets committed past the dead letter")
    dead = consume_all(runtime.bootstrap, runtime.dlq, expect=1)
    assert [m.value() for m in dead] == [corrupt]
    headers = dict(dead[0].headers())
    assert headers[HEADER_PREFIX + "stage"] == b"VALUE_CONVERTER"
    assert headers[HEADER_PREFIX + "offset"] == b"250"
    keys = [k for k in _download(s3_client, bucket, tmp_path) if k.endswith(".parquet")]
    assert _count(tmp_path) == (499, 499)
    assert len(keys) == 3  # one object per hour: the batch was not split to find the record

"""The warehouse task writing to moto's S3 server, driven directly (start/put/flush/abort).

Objects are read back by mirroring the bucket to a directory and querying it with
DuckDB locally: DuckDB's httpfs extension cannot be installed offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from common.errors import PermanentError, RetriableError
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.storage import S3Storage
from connectors.sink_warehouse.task import WarehouseSinkTask
import warehouse_records as helpers
from devstack.s3_fault_proxy import FaultProxy

HOUR_MS, T0 = helpers.HOUR_MS, helpers.T0
MIB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("aws_credentials")


def s3_task(endpoint: str, bucket: str, context: Any, **settings: Any) -> WarehouseSinkTask:
    task = WarehouseSinkTask(WarehouseSettings(
        warehouse_url=f"s3://{bucket}/warehouse", s3_endpoint_url=endpoint, s3_region="us-east-1", **settings))
    task.start(context)
    return task


def all_keys(s3_client: Any, bucket: str) -> list[str]:
    response = s3_client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in response.get("Contents", []))


def keys(s3_client: Any, bucket: str) -> list[str]:
    """The data files (not the schema manifests under ``_schemas/``)."""
    return [k for k in all_keys(s3_client, bucket) if "/_schemas/" not in k]


def query(root: Path, sql: str) -> list[tuple[Any, ...]]:
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true, union_by_name=true)"
    return duckdb.sql(sql.replace("WAREHOUSE", source)).fetchall()


def test_records_spanning_several_hours_land_in_their_hour_folders(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    task = s3_task(s3_endpoint, bucket, context)
    task.put(make_records(range(50), ts=lambda i: T0 + (i // 10) * HOUR_MS))  # 10 per hour, 5 hours
    task.flush({})
    assert keys(s3_client, bucket) == [
        f"warehouse/topic=lab-results/dt=2024-06-10/hour={6 + h:02d}/lab-results+0+{h * 10:010d}.parquet"
        for h in range(5)
    ]
    per_hour = query(download() / "warehouse", "select hour::int, count(*), min(epoch_ms(make_timestamp("
                     "timestamp * 1000))) from WAREHOUSE group by 1 order by 1")
    assert [(h, n) for h, n, _ in per_hour] == [(6 + h, 10) for h in range(5)]


def test_schema_evolution_and_crash_replay_read_back_exactly_once(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    evolved = helpers.with_extra_field(helpers.lab_result_schema(), "specimen")
    spread = {"ts": lambda i: T0 + (i % 2) * HOUR_MS}

    def produce(task: WarehouseSinkTask, start: int, end: int) -> None:
        # offsets < 300 use the original schema, later ones the evolved one, on two partitions
        for partition in (0, 1):
            old = range(start, min(end, 300))
            new = range(max(start, 300), end)
            if old:
                task.put(make_records(old, partition=partition, **spread))
            if new:
                task.put(make_records(new, partition=partition, schema=evolved, extra={"specimen": "serum"},
                                      **spread))

    first = s3_task(s3_endpoint, bucket, context)
    produce(first, 0, 200)
    first.flush({})  # committed at 200
    crashed = s3_task(s3_endpoint, bucket, context)
    produce(crashed, 200, 450)
    crashed.flush({})  # uploaded; the process dies before committing 450
    restarted = s3_task(s3_endpoint, bucket, context)  # resumes at 200, different round ends
    for start, end in ((200, 260), (260, 390), (390, 500)):
        produce(restarted, start, end)
        restarted.flush({})

    root = download() / "warehouse"
    produced = 2 * 500
    (distinct, total), = query(root, "select count(distinct (_kafka_topic, _kafka_partition, _kafka_offset)), "
                                     "count(*) from WAREHOUSE")
    assert distinct == produced and total == produced
    by_schema = query(root, "select specimen, count(*), min(_kafka_offset), max(_kafka_offset) "
                            "from WAREHOUSE group by 1 order by 1 nulls first")
    assert by_schema == [(None, 600, 0, 299), ("serum", 400, 300, 499)]


def test_large_object_goes_up_as_multipart(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    noisy = helpers.with_extra_field(helpers.lab_result_schema(), "raw_hl7")
    records = make_records(range(4000), schema=noisy, ts=lambda i: T0,
                           extra=lambda i: {"raw_hl7": os.urandom(2048).hex()})
    # ~2 KB per row after compression (random hex): the object is ~8 MiB, above the 5 MiB part size.
    task = s3_task(s3_endpoint, bucket, context, s3_part_size_bytes=5 * MIB)
    task.put(records)
    task.flush({})
    key, = keys(s3_client, bucket)
    head = s3_client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] > 5 * MIB
    assert head["ETag"].strip('"').endswith("-2")  # an ETag "<md5>-<parts>" means multipart
    assert query(download() / "warehouse", "select count(*) from WAREHOUSE") == [(4000,)]


def test_s3_503s_within_the_sdk_retries_lose_nothing(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    with FaultProxy(s3_endpoint, fail_first=3) as proxy:
        # 5 attempts fit below max.poll.interval.ms with shorter read timeouts (the task checks at start)
        task = s3_task(proxy.endpoint_url, bucket, context, s3_max_attempts=5, s3_read_timeout_ms=10_000)
        task.put(make_records(range(100), ts=lambda i: T0 + (i % 3) * HOUR_MS))
        task.flush({})
    assert proxy.failed == 3
    assert query(download() / "warehouse", "select count(distinct _kafka_offset), count(*) from WAREHOUSE") \
        == [(100, 100)]


def test_s3_outage_beyond_sdk_retries_is_retriable_and_the_retry_loses_nothing(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    batch = make_records(range(100), ts=lambda i: T0 + (i % 3) * HOUR_MS)
    # 2 attempts per request: the first object gets through, the second fails twice -> RetriableError.
    with FaultProxy(s3_endpoint, fail_first=0) as proxy:
        task = s3_task(proxy.endpoint_url, bucket, context, s3_max_attempts=2)
        task.put(batch)
        original = task.storage.open_object  # type: ignore[union-attr]
        calls = []

        def outage_after_first(key: str):  # type: ignore[no-untyped-def]
            if key.endswith(".parquet"):  # not the schema manifest, which is written first
                calls.append(key)
            if len(calls) == 2:
                proxy.remaining = 10  # S3 goes down mid-flush
            return original(key)

        task.storage.open_object = outage_after_first  # type: ignore[union-attr,method-assign]
        with pytest.raises(RetriableError, match="SlowDown"):
            task.flush({})
        assert len(keys(s3_client, bucket)) == 1  # half-flushed
        proxy.remaining = 0  # S3 is back; the runtime aborts and re-delivers the round
        task.abort()
        task.put(batch)
        task.flush({})
    assert len(keys(s3_client, bucket)) == 3
    assert query(download() / "warehouse", "select count(distinct _kafka_offset), count(*) from WAREHOUSE") \
        == [(100, 100)]


def test_sse_s3_header_is_sent(s3_endpoint: str, s3_client: Any, bucket: str, context: Any,
                               make_records: Callable[..., Any]) -> None:
    task = s3_task(s3_endpoint, bucket, context, s3_sse="AES256")
    task.put(make_records(range(3)))
    task.flush({})
    data, schema = keys(s3_client, bucket), all_keys(s3_client, bucket)
    assert len(data) == 1 and len(schema) == 2
    assert all(s3_client.head_object(Bucket=bucket, Key=k)["ServerSideEncryption"] == "AES256" for k in schema)


@pytest.mark.parametrize("sse,key_id", [("AES256", None), ("aws:kms", "alias/labconnect-warehouse")])
def test_sse_settings_reach_a_single_put_and_a_multipart_upload(
        s3_endpoint: str, s3_client: Any, bucket: str, sse: str, key_id: str | None) -> None:
    storage = S3Storage.from_url(f"s3://{bucket}/sse", endpoint_url=s3_endpoint, region="us-east-1",
                                 part_size=5 * MIB, sse=sse, sse_kms_key_id=key_id)
    uploads: list[str] = []
    storage.client.meta.events.register("before-call.s3.CreateMultipartUpload",
                                        lambda params, **_: uploads.append(params["headers"].get(
                                            "x-amz-server-side-encryption", "")))
    with storage.open_object("sse/small.bin") as out:
        out.write(b"x" * 1024)
    with storage.open_object("sse/large.bin") as out:
        out.write(os.urandom(6 * MIB))  # over one part: a multipart upload
    assert uploads == [sse], "the multipart upload asked for the encryption itself"
    for key in ("sse/small.bin", "sse/large.bin"):
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == sse
        assert head.get("SSEKMSKeyId") == key_id
    assert s3_client.head_object(Bucket=bucket, Key="sse/large.bin")["ContentLength"] == 6 * MIB


def test_incompatible_type_change_is_rejected_by_a_new_process_too(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    metadata_as_string = helpers.lab_result_schema()
    for field in metadata_as_string["fields"]:
        if field["name"] == "metadata":
            field["type"], field["default"] = "string", ""
    first = s3_task(s3_endpoint, bucket, context)
    first.put(make_records(range(3)))
    first.flush({})
    (manifest,) = [k for k in all_keys(s3_client, bucket) if k.startswith("warehouse/topic=lab-results/_schemas/")]
    body = s3_client.get_object(Bucket=bucket, Key=manifest)["Body"].read()
    assert pa.types.is_map(pa.ipc.open_file(pa.BufferReader(body)).schema.field("metadata").type)
    restarted = s3_task(s3_endpoint, bucket, context)  # after a restart or rebalance
    with pytest.raises(PermanentError, match="lab-results/0@3: .*metadata"):
        restarted.put(make_records([3], schema=metadata_as_string, extra={"metadata": "lab=main"}))
    restarted.put(make_records(range(4, 6)))
    restarted.flush({})
    assert query(download() / "warehouse", "select count(*), count(metadata['lab']) from WAREHOUSE") == [(5, 5)]


def test_a_round_longer_than_its_deadline_finishes_on_retry_and_each_object_is_put_once(
        s3_endpoint: str, s3_client: Any, bucket: str, context: Any, make_records: Callable[..., Any],
        download: Callable[[], Path]) -> None:
    now = [1000.0]
    task = WarehouseSinkTask(WarehouseSettings(
        warehouse_url=f"s3://{bucket}/warehouse", s3_endpoint_url=s3_endpoint, s3_region="us-east-1",
        warehouse_flush_timeout_ms=1000), clock=lambda: now[0])
    task.start(context)
    storage: Any = task.storage
    upload, uploaded = storage._upload, []

    def slow_upload(body: Any, key: str, size: int) -> None:  # each PUT takes 600 ms
        upload(body, key, size)
        uploaded.append(key)
        now[0] += 0.6

    storage._upload = slow_upload
    batch = make_records(range(100), ts=lambda i: T0 + (i % 4) * HOUR_MS)  # four objects
    for attempt in range(1, 6):
        task.put(batch)
        try:
            task.flush({})
            break
        except RetriableError:
            task.abort()
            now[0] += 60
    else:
        pytest.fail("the round never finished: every retry started over")
    assert attempt == 3  # manifest + 1 object, then 2 objects, then the last one
    data = [k for k in uploaded if "/_schemas/" not in k]
    assert sorted(data) == keys(s3_client, bucket) and len(data) == 4
    assert query(download() / "warehouse", "select count(distinct _kafka_offset), count(*) from WAREHOUSE") \
        == [(100, 100)]

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import fastavro
import pyarrow.parquet as pq
import pytest

from warehouse_records import RecordFactory, FakeContext, T0
from connectors.sink_warehouse.formats import AvroFormat, JsonLinesFormat, ParquetFormat

KAFKA_COLUMNS = ["_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp", "_kafka_key"]


def write(fmt, context: FakeContext, records) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    fmt.write(out, fmt.prepare(context.writer_schema(records[0].schema)), records)
    return out.getvalue()


def test_parquet_round_trip_keeps_values_types_and_kafka_columns(
        make_records: RecordFactory, context: FakeContext) -> None:
    records = make_records(range(100, 110))
    table = pq.read_table(io.BytesIO(write(ParquetFormat(include_headers=True), context, records)))
    rows = table.to_pylist()
    assert [r["_kafka_offset"] for r in rows] == list(range(100, 110))
    first = rows[0]
    assert first["event_id"] == "evt-100" and first["status"] == "VERIFIED" and first["unit"] == "g/dL"
    assert first["observed_time"] == datetime.fromtimestamp((T0 + 100_000 - 60_000) / 1000, timezone.utc)
    assert dict(first["metadata"]) == {"lab": "main"}
    assert first["_kafka_topic"] == "lab-results" and first["_kafka_partition"] == 0
    assert first["_kafka_key"] == records[0].key
    assert first["_kafka_timestamp"] == datetime.fromtimestamp((T0 + 100_000) / 1000, timezone.utc)
    assert first["_kafka_headers"] == [{"key": "source", "value": b"LIS1"}]
    assert rows[1]["abnormal_flag"] is None


@pytest.mark.parametrize("rows,row_group_size,groups", [(10, 4, 3), (10, 100, 1)])
def test_parquet_row_groups_and_compression(make_records: RecordFactory, context: FakeContext,
                                            rows: int, row_group_size: int, groups: int) -> None:
    data = write(ParquetFormat("zstd", row_group_size), context, make_records(range(rows)))
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.num_row_groups == groups and meta.num_rows == rows
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_avro_container_round_trip(make_records: RecordFactory, context: FakeContext) -> None:
    records = make_records(range(5))
    rows = list(fastavro.reader(io.BytesIO(write(AvroFormat(include_headers=True), context, records))))
    assert [r["_kafka_offset"] for r in rows] == list(range(5))
    assert rows[0]["event_id"] == "evt-0" and rows[0]["status"] == "VERIFIED"
    assert rows[0]["_kafka_headers"] == [{"key": "source", "value": b"LIS1"}]
    assert rows[0]["observed_time"] == records[0].value["observed_time"]


def test_json_lines_round_trip(make_records: RecordFactory, context: FakeContext) -> None:
    records = make_records(range(3))
    lines = write(JsonLinesFormat(), context, records).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["_kafka_offset"] for r in rows] == [0, 1, 2]
    assert rows[0]["observed_time"] == records[0].value["observed_time"].isoformat()
    assert set(KAFKA_COLUMNS) <= set(rows[0])

"""Bulk decoding (DuckDB's avro extension) must give exactly the table that decoding record by
record (fastavro + RowLayout) gives, or refuse so the caller decodes record by record."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from common.records import SinkRecord
from connectors.sink_warehouse import avro_arrow
from connectors.sink_warehouse.arrow_schema import avro_to_arrow
from connectors.sink_warehouse.avro_arrow import AvroBatchDecoder, BulkDecodeUnavailable, container_file, \
    container_header
from connectors.sink_warehouse.columns import RowLayout

KITCHEN_SINK = {
    "type": "record", "name": "Everything", "namespace": "test",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "maybe", "type": ["null", "string"], "default": None},
        {"name": "maybe_first", "type": ["long", "null"]},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["A", "B", "C"]}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "meta", "type": {"type": "map", "values": ["null", "string"]}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": "int"}, {"name": "ys", "type": {"type": "array", "items": "long"}}]}},
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
    ],
}


def kitchen_value(i: int) -> dict[str, Any]:
    return {
        "s": f"héllo-{i}", "i": -i, "l": 2**40 + i, "f": 1.5 * i, "d": 2.25 * i, "b": i % 2 == 0,
        "raw": bytes([i % 256, 0, 255]), "maybe": None if i % 3 else f"m{i}", "maybe_first": i if i % 2 else None,
        "status": "ABC"[i % 3], "ts": 1_718_000_000_000 + i, "ts_us": None if i % 4 == 0 else 1_718_000_000_000_123 + i,
        "day": 19_000 + i, "tags": [f"t{j}" for j in range(i % 3)], "meta": {"k": "v", "n": None} if i % 2 else {},
        "inner": {"x": i, "ys": [i, i + 1]}, "inners": [{"x": j, "ys": []} for j in range(i % 2)],
    }


def _bodies(schema: dict[str, Any], values: list[dict[str, Any]]) -> list[bytes]:
    parsed = fastavro.parse_schema(schema)
    out = []
    for value in values:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, value)
        out.append(buf.getvalue())
    return out


def _record_by_record(schema: dict[str, Any], bodies: list[bytes]) -> pa.Table:
    parsed = fastavro.parse_schema(schema)
    records = [SinkRecord("t", 0, n, 0, None, fastavro.schemaless_reader(io.BytesIO(b), parsed, None), None, b, [])
               for n, b in enumerate(bodies)]
    layout = RowLayout.for_values(avro_to_arrow(parsed), include_headers=False)
    return pa.Table.from_arrays(layout.value_arrays(records), schema=pa.schema(layout.value_fields))


@pytest.fixture
def decoder() -> Any:
    d = AvroBatchDecoder(workers=2)
    yield d
    d.close()


def test_container_file_is_a_valid_avro_file() -> None:
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(5)])
    data = container_file(container_header(fastavro.parse_schema(KITCHEN_SINK)), bodies)
    assert [r["s"] for r in fastavro.reader(io.BytesIO(data))] == [f"héllo-{i}" for i in range(5)]


def test_bulk_decode_equals_record_by_record(decoder: AvroBatchDecoder) -> None:
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(50)])
    expected = _record_by_record(KITCHEN_SINK, bodies)
    got = decoder.decode("fp:kitchen", fastavro.parse_schema(KITCHEN_SINK), bodies, 0, expected.schema)
    assert got.schema.equals(expected.schema, check_metadata=True)
    assert got.equals(expected)
    assert got["ts"][1].as_py() == dt.datetime(2024, 6, 10, 6, 13, 20, 1000, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("frame", [5, 10])
def test_framed_values_split_over_threads_keep_their_order(
        decoder: AvroBatchDecoder, monkeypatch: pytest.MonkeyPatch, frame: int) -> None:
    monkeypatch.setattr(avro_arrow, "_MIN_PART", 7)  # several files for a small batch
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(40)])
    framed = [bytes([0xC3, 1]) + bytes(frame - 2) + body for body in bodies]
    expected = _record_by_record(KITCHEN_SINK, bodies)
    got = decoder.decode(f"fp:framed{frame}", fastavro.parse_schema(KITCHEN_SINK), framed, frame, expected.schema)
    assert got.equals(expected)


@pytest.mark.parametrize("cut", [1, 5, 30])
def test_a_truncated_body_refuses_the_batch(decoder: AvroBatchDecoder, cut: int) -> None:
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(4)])
    target = _record_by_record(KITCHEN_SINK, bodies).schema
    bodies[1] = bodies[1][:cut]
    with pytest.raises(BulkDecodeUnavailable):
        decoder.decode("fp:k", fastavro.parse_schema(KITCHEN_SINK), bodies, 0, target)


def test_bytes_after_a_body_do_not_shift_its_neighbours(decoder: AvroBatchDecoder) -> None:
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(4)])
    expected = _record_by_record(KITCHEN_SINK, bodies)  # fastavro ignores trailing bytes too
    bodies[1] += b"\x02\x00junk"
    assert decoder.decode("fp:k", fastavro.parse_schema(KITCHEN_SINK), bodies, 0, expected.schema).equals(expected)


def test_batches_of_equal_size_written_in_the_same_second_are_each_read(decoder: AvroBatchDecoder) -> None:
    # DuckDB's file cache keys on path, size and a whole-second mtime.
    schema = fastavro.parse_schema(KITCHEN_SINK)
    first = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(12, 24)])
    second = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(24, 36)])
    assert [len(b) for b in first] == [len(b) for b in second]
    target = _record_by_record(KITCHEN_SINK, first).schema
    assert decoder.decode("fp:k", schema, first, 0, target)["i"].to_pylist() == list(range(-12, -24, -1))
    assert decoder.decode("fp:k", schema, second, 0, target)["i"].to_pylist() == list(range(-24, -36, -1))


def test_no_value_stays_on_disk_after_a_decode(decoder: AvroBatchDecoder) -> None:
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(5)])
    target = _record_by_record(KITCHEN_SINK, bodies).schema
    decoder.decode("fp:k", fastavro.parse_schema(KITCHEN_SINK), bodies, 0, target)
    assert list(decoder._dir.iterdir()) == []


def test_a_corrupt_batch_leaves_the_schema_eligible_for_bulk(decoder: AvroBatchDecoder) -> None:
    schema = fastavro.parse_schema(KITCHEN_SINK)
    bodies = _bodies(KITCHEN_SINK, [kitchen_value(i) for i in range(4)])
    target = _record_by_record(KITCHEN_SINK, bodies).schema
    with pytest.raises(BulkDecodeUnavailable):
        decoder.decode("fp:k", schema, [bodies[0], bodies[1][:3], *bodies[2:]], 0, target)
    assert decoder.decode("fp:k", schema, bodies, 0, target).num_rows == 4


@pytest.mark.parametrize("avro_type, value", [
    ({"type": "int", "logicalType": "time-millis"}, 25 * 3_600_000),
    ({"type": "int", "logicalType": "time-millis"}, -5),
    ({"type": "long", "logicalType": "time-micros"}, 86_400_000_000),
    ({"type": "long", "logicalType": "timestamp-millis"}, 253_402_300_800_000),  # year 10000
    ({"type": "int", "logicalType": "date"}, 2_932_897),
])
def test_dates_and_times_one_by_one_decoding_rejects_are_not_decoded_in_bulk(
        decoder: AvroBatchDecoder, avro_type: dict[str, Any], value: int) -> None:
    schema = {"type": "record", "name": "One", "fields": [{"name": "v", "type": avro_type}]}
    plain = {"type": "record", "name": "One", "fields": [{"name": "v", "type": avro_type["type"]}]}
    bodies = _bodies(plain, [{"v": value}])  # the same bytes, written without the logical type
    target = pa.schema([pa.field("v", avro_to_arrow(fastavro.parse_schema(schema)).field("v").type)])
    with pytest.raises(BulkDecodeUnavailable):
        decoder.decode("fp:one", fastavro.parse_schema(schema), bodies, 0, target)


@pytest.mark.parametrize("avro_type", [
    {"type": "string", "logicalType": "uuid"},
    {"type": "array", "items": {"type": "long", "logicalType": "timestamp-millis"}},
])
def test_uuids_and_nested_times_are_decoded_one_by_one(decoder: AvroBatchDecoder, avro_type: dict[str, Any]) -> None:
    schema = {"type": "record", "name": "One", "fields": [{"name": "v", "type": avro_type}]}
    value = str(uuid.UUID(int=7)).upper() if avro_type["type"] == "string" else [1]
    bodies = _bodies(schema, [{"v": value}])
    with pytest.raises(BulkDecodeUnavailable):
        decoder.decode("fp:one", fastavro.parse_schema(schema), bodies, 0, _record_by_record(schema, bodies).schema)


@pytest.mark.parametrize("avro_type, value", [
    ({"type": "fixed", "name": "F4", "size": 4}, b"abcd"),
    ({"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}, decimal.Decimal("12.34")),
    ({"type": "int", "logicalType": "time-millis"}, dt.time(1, 2, 3, 4000)),
])
def test_types_without_an_exact_bulk_reading_are_refused_or_exact(
        decoder: AvroBatchDecoder, avro_type: dict[str, Any], value: Any) -> None:
    schema = {"type": "record", "name": "One", "fields": [{"name": "v", "type": avro_type}]}
    bodies = _bodies(schema, [{"v": value}, {"v": value}])
    expected = _record_by_record(schema, bodies)
    try:
        got = decoder.decode("fp:one", fastavro.parse_schema(schema), bodies, 0, expected.schema)
    except BulkDecodeUnavailable:
        return  # the caller decodes these record by record
    assert got.equals(expected)


def test_a_start_removes_directories_left_by_dead_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, stale_unnamed, fresh_unnamed = (tmp_path / "labconnect-avro-999999999-abc", tmp_path / "labconnect-avro-old1",
                                          tmp_path / "labconnect-avro-new1")
    for directory in (dead, stale_unnamed, fresh_unnamed):
        directory.mkdir()
        (directory / "0-0.avro").write_bytes(b"patient values")
    os.utime(stale_unnamed, (time.time() - 7200, time.time() - 7200))
    AvroBatchDecoder(workers=1).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labconnect-avro-new1"]

from __future__ import annotations

import copy
import json
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from warehouse_records import lab_result_schema
from connectors.sink_warehouse.arrow_schema import (
    SchemaMappingError, add_column_types, avro_to_arrow, evolution_conflicts)

RICH: dict[str, Any] = {
    "type": "record", "name": "Rich", "namespace": "com.example",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "count", "type": "int"},
        {"name": "total", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "value", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "hash", "type": {"type": "fixed", "name": "Md5", "size": 16}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["A", "B"]}},
        {"name": "previous_status", "type": ["null", "Status"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": ["null", "long"]}},
        {"name": "origin", "type": ["null", {"type": "record", "name": "Origin",
                                             "fields": [{"name": "system", "type": "string"}]}]},
        {"name": "other_origin", "type": "Origin"},
    ],
}


@pytest.fixture(params=["plain", "fastavro-parsed"])
def as_given(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Both shapes the runtime may hand over: .avsc JSON and fastavro.parse_schema output."""
    if request.param == "plain":
        return lambda schema: copy.deepcopy(schema)
    return lambda schema: fastavro.parse_schema(copy.deepcopy(schema))


def test_lab_result_maps_to_typed_nullable_columns(as_given) -> None:  # type: ignore[no-untyped-def]
    schema = avro_to_arrow(as_given(lab_result_schema()))
    assert schema.field("timestamp").type == pa.int64() and not schema.field("timestamp").nullable
    assert schema.field("unit").type == pa.string() and schema.field("unit").nullable
    assert schema.field("observed_time").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("observed_time").nullable
    assert schema.field("metadata").type == pa.map_(pa.string(), pa.field("value", pa.string(), nullable=False))
    status = schema.field("status")
    assert status.type == pa.string()
    assert json.loads(status.metadata[b"avro.enum.symbols"]) == ["PENDING", "COMPLETED", "VERIFIED"]


def test_logical_types_named_references_and_nesting(as_given) -> None:  # type: ignore[no-untyped-def]
    schema = avro_to_arrow(as_given(RICH))
    expected = {
        "flag": pa.bool_(), "count": pa.int32(), "total": pa.int64(), "ratio": pa.float32(),
        "value": pa.float64(), "blob": pa.binary(), "day": pa.date32(),
        "at_ms": pa.timestamp("ms", tz="UTC"), "at_us": pa.timestamp("us", tz="UTC"),
        "local_ms": pa.timestamp("ms"), "clock": pa.time32("ms"), "amount": pa.decimal128(10, 2),
        "id": pa.string(), "hash": pa.binary(16), "status": pa.string(), "previous_status": pa.string(),
        "tags": pa.list_(pa.field("element", pa.string(), nullable=False)),
        "attrs": pa.map_(pa.string(), pa.field("value", pa.int64(), nullable=True)),
        "origin": pa.struct([pa.field("system", pa.string(), nullable=False)]),
        "other_origin": pa.struct([pa.field("system", pa.string(), nullable=False)]),
    }
    assert {f.name: f.type for f in schema} == expected
    assert schema.field("origin").nullable and not schema.field("other_origin").nullable


def test_union_of_two_value_types_is_a_permanent_error() -> None:
    schema = {"type": "record", "name": "U", "fields": [{"name": "x", "type": ["null", "string", "long"]}]}
    with pytest.raises(SchemaMappingError, match="unions"):
        avro_to_arrow(schema)


def test_recursive_record_is_a_permanent_error() -> None:
    schema = {"type": "record", "name": "Node", "fields": [
        {"name": "next", "type": ["null", "Node"], "default": None}]}
    with pytest.raises(SchemaMappingError, match="recursive"):
        avro_to_arrow(schema)


def test_new_optional_column_is_compatible_type_change_is_not() -> None:
    before = avro_to_arrow(lab_result_schema())
    known = {f.name: [f.type] for f in before}
    added = before.append(pa.field("specimen", pa.string()))
    assert evolution_conflicts(known, added) == []
    widened = before.set(before.get_field_index("version"), pa.field("version", pa.int64()))
    assert evolution_conflicts(known, widened) == []
    changed = before.set(before.get_field_index("timestamp"), pa.field("timestamp", pa.string()))
    assert evolution_conflicts(known, changed) == ["timestamp"]


def specimen_schema(specimen_fields: list[dict[str, Any]], shape: str = "record") -> pa.Schema:
    """LabResult plus a nested ``specimen`` column: a record, an array of records or a map of records."""
    record: dict[str, Any] = {"type": "record", "name": "Specimen", "fields": specimen_fields}
    nested: dict[str, Any] = {"record": record, "array": {"type": "array", "items": record},
                              "map": {"type": "map", "values": record}}[shape]
    schema = lab_result_schema()
    schema["fields"].append({"name": "specimen", "type": ["null", nested], "default": None})
    return avro_to_arrow(schema)


def known_types(*schemas: pa.Schema) -> dict[str, list[pa.DataType]]:
    known: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        add_column_types(known, schema)
    return known


SPECIMEN = [{"name": "kind", "type": "string"}, {"name": "volume_ml", "type": "int"}]


@pytest.mark.parametrize("shape", ["record", "array", "map"])
def test_a_nested_record_gaining_an_optional_field_is_compatible(shape: str) -> None:
    before = specimen_schema(SPECIMEN, shape)
    gained = specimen_schema(SPECIMEN + [{"name": "container", "type": ["null", "string"], "default": None}], shape)
    assert evolution_conflicts(known_types(before), gained) == []
    assert evolution_conflicts(known_types(gained), before) == []  # and files of both read together
    widened = specimen_schema([SPECIMEN[0], {"name": "volume_ml", "type": "long"}], shape)
    assert evolution_conflicts(known_types(before, gained), widened) == []


@pytest.mark.parametrize(("shape", "path"), [("record", "specimen.volume_ml"),
                                             ("array", "specimen.element.volume_ml"),
                                             ("map", "specimen.value.volume_ml")])
def test_a_type_change_of_a_nested_field_is_a_conflict_named_by_its_path(shape: str, path: str) -> None:
    before = specimen_schema(SPECIMEN, shape)
    changed = specimen_schema([SPECIMEN[0], {"name": "volume_ml", "type": "string"}], shape)
    assert evolution_conflicts(known_types(before), changed) == [path]


def test_the_verdict_compares_every_known_type_whatever_their_order() -> None:
    base = avro_to_arrow(lab_result_schema())
    as_float, as_double, as_long = (base.append(pa.field("ratio", t)) for t in (pa.float32(), pa.float64(), pa.int64()))
    # long widens to double but not to float: files with float exist, so long conflicts.
    assert evolution_conflicts(known_types(as_float, as_double), as_long) == ["ratio"]
    assert evolution_conflicts(known_types(as_double, as_float), as_long) == ["ratio"]

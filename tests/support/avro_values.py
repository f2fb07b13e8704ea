"""Hypothesis strategies for Avro values of a parsed schema, a kitchen-sink schema with
every Avro feature, and the comparisons the codec tests make against fastavro."""

from __future__ import annotations

import datetime
import decimal
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

LONG = (-(1 << 63), (1 << 63) - 1)
LOGICAL_TYPES = {"timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros", "date",
                 "time-millis", "time-micros", "uuid", "decimal"}
INT = (-(1 << 31), (1 << 31) - 1)


def values(schema: Any, named: dict[str, Any] | None = None, depth: int = 0) -> st.SearchStrategy[Any]:
    """Valid values of a parsed schema. Fields with a default, or nullable, are sometimes left
    out (the encoder then writes the default, as fastavro does)."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of([values(branch, named, depth) for branch in schema])
    if isinstance(schema, str) and schema in named:
        if depth > 3:
            return st.nothing()
        return st.deferred(lambda: values(named[schema], named, depth + 1))
    kind = schema["type"] if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical in LOGICAL_TYPES:
        return _logical(schema, kind, logical)
    if kind in ("record", "enum", "fixed"):
        named[schema["name"]] = schema
    return _PLAIN[kind](schema, named, depth)


def _record(schema: Any, named: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    required, optional = {}, {}
    for field in schema["fields"]:
        strategy = values(field["type"], named, depth + 1)
        if "default" in field or (isinstance(field["type"], list) and "null" in field["type"]):
            optional[field["name"]] = strategy
        else:
            required[field["name"]] = strategy
    return st.fixed_dictionaries(required, optional=optional)


_PLAIN: dict[str, Callable[[Any, dict[str, Any], int], st.SearchStrategy[Any]]] = {
    "null": lambda s, n, d: st.none(),
    "boolean": lambda s, n, d: st.booleans(),
    "int": lambda s, n, d: st.integers(*INT),
    "long": lambda s, n, d: st.one_of(st.integers(*LONG), st.integers(-200, 200)),
    "float": lambda s, n, d: st.floats(width=32),
    "double": lambda s, n, d: st.one_of(st.floats(), st.integers(-(2 ** 53), 2 ** 53)),
    "bytes": lambda s, n, d: st.binary(max_size=80),
    "string": lambda s, n, d: st.text(max_size=80),
    "enum": lambda s, n, d: st.sampled_from(s["symbols"]),
    "fixed": lambda s, n, d: st.binary(min_size=s["size"], max_size=s["size"]),
    "array": lambda s, n, d: st.lists(values(s["items"], n, d + 1), max_size=70 if d == 0 else 4),
    "map": lambda s, n, d: st.dictionaries(st.text(max_size=10), values(s["values"], n, d + 1),
                                           max_size=70 if d == 0 else 4),
    "record": _record,
}


def _logical(schema: Any, kind: str, logical: str) -> st.SearchStrategy[Any]:
    utc = st.just(datetime.timezone.utc)
    # Epoch milliseconds (micros) from year 1 to 9999: what a datetime can hold when decoded.
    scale = 1000 if logical.endswith("micros") else 1
    epoch_range = st.integers(-62_135_596_800_000 * scale, 253_402_300_799_999 * scale)
    if logical in ("timestamp-millis", "timestamp-micros"):
        return st.one_of(epoch_range, st.datetimes(timezones=utc))
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return st.one_of(epoch_range, st.datetimes())
    if logical == "date":
        return st.one_of(st.dates(), st.integers(-700_000, 2_000_000))
    if logical == "time-millis":
        return st.one_of(st.times(), st.integers(0, 86_399_999))
    if logical == "time-micros":
        return st.one_of(st.times(), st.integers(0, 86_399_999_999))
    if logical == "uuid":
        return st.one_of(st.uuids(), st.uuids().map(str))
    if logical == "decimal":
        places, digits = schema.get("scale", 0), schema["precision"]
        limit = decimal.Decimal(10) ** (digits - places) - 1
        numbers = st.decimals(min_value=-limit, max_value=limit, places=places, allow_nan=False,
                              allow_infinity=False)
        if kind == "fixed":
            return numbers
        return st.one_of(numbers, st.binary(max_size=6))
    raise AssertionError(f"no strategy for logical type {logical}")


# Values of the wrong type, out of range or exotic, put anywhere in a valid value.
class _Text(str):
    pass


class _Number(int):
    pass


ODD_VALUES = [None, True, False, 0, -1, 1 << 31, 1 << 40, 1 << 63, -(1 << 63) - 1, 1 << 70, 1.5, float("nan"),
              "", "x", "PENDING", "\ud800", _Text("abc"), _Number(3), b"", b"x" * 16, bytearray(b"ab"),
              [], [1], ("string", "x"), {}, {"a": 1}, {1: "x"}, {"-type": "other"}, object(),
              datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), uuid.UUID(int=7),
              decimal.Decimal("1.5"), decimal.Decimal("NaN"), "2024-02-03", "1.5", "NaN"]


@st.composite
def spoiled(draw: st.DrawFn, value_strategy: st.SearchStrategy[Any]) -> Any:
    """A valid value with one place in it (the value itself, a field, an item, a map value or
    key) replaced by an odd value, or a field dropped."""
    value = draw(value_strategy)
    places = list(_places(value, ()))
    path = draw(st.sampled_from(places))
    odd = draw(st.sampled_from(ODD_VALUES))
    if not path:
        return odd
    if draw(st.booleans()) and isinstance(_at(value, path[:-1]), dict):
        del _at(value, path[:-1])[path[-1]]  # a missing field or map entry
        return value
    _at(value, path[:-1])[path[-1]] = odd
    return value


def _places(value: Any, path: tuple[Any, ...]) -> Any:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def outcome(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """("ok", comparable result) or ("error", exception class): what a call amounts to."""
    try:
        return "ok", comparable(function(*args))
    except Exception as exc:  # noqa: BLE001 - comparing which exception, whatever it is
        return "error", type(exc)


def comparable(value: Any) -> Any:
    """``value`` as nested tuples that are equal only when the two values are equal in type,
    in dict key order and bit for bit in floats (NaN included)."""
    if isinstance(value, dict):
        return ("dict", tuple((comparable(k), comparable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(comparable(item) for item in value))
    if isinstance(value, float):
        return ("float", struct.pack("<d", value) if not math.isnan(value) else "nan")
    return (type(value).__name__, value)


KITCHEN_SINK: dict[str, Any] = {
    "type": "record", "name": "KitchenSink", "namespace": "test.sink",
    "fields": [
        {"name": "null_field", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"],
                                    "default": "RED"}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 16}},
        {"name": "numbers", "type": {"type": "array", "items": "int"}},
        {"name": "labels", "type": {"type": "map", "values": "string"}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "street", "type": "string"},
            {"name": "zip", "type": ["null", "string"], "default": None},
        ]}},
        {"name": "previous_address", "type": ["null", "Address"], "default": None},
        {"name": "addresses", "type": {"type": "array", "items": "Address"}, "default": []},
        {"name": "chain", "type": ["null", {"type": "record", "name": "Node", "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ]}], "default": None},
        {"name": "maybe_text", "type": ["null", "string"], "default": None},
        {"name": "text_or_null", "type": ["string", "null"], "default": "none"},
        {"name": "number", "type": ["null", "int", "long", "double"], "default": None},
        {"name": "float_or_double", "type": ["float", "double"]},
        {"name": "float_then_long", "type": ["float", "long", "double"]},
        {"name": "flag_or_int", "type": ["boolean", "int"]},
        {"name": "symbol_or_text", "type": ["Colour", "string"]},
        {"name": "digest_or_bytes", "type": ["Digest", "bytes"]},
        {"name": "bytes_or_digest", "type": ["bytes", "Digest"]},
        {"name": "list_or_map", "type": ["null", {"type": "array", "items": "string"},
                                         {"type": "map", "values": "long"}]},
        {"name": "map_of_unions", "type": {"type": "map", "values": ["null", "boolean", "string"]}, "default": {}},
        {"name": "matrix", "type": {"type": "array", "items": {"type": "array", "items": "long"}}, "default": []},
        {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "created_micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "observed", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "local_time", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "birth_date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at_millis", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "at_micros", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "unknown_logical", "type": {"type": "string", "logicalType": "made-up"}},
        {"name": "version", "type": "int", "default": 1},
        {"name": "zone", "type": "string", "default": "UTC"},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": ["a"]},
    ],
}

# Values the generated encoder leaves to fastavro, and must leave exactly those: unions where
# fastavro's choice of branch depends on more than the value's type, and a decimal in a fixed
# (fastavro converts it to a bytearray, which its own union validation refuses).
_POINT = {"type": "record", "name": "Point", "fields": [{"name": "x", "type": "double"},
                                                      {"name": "y", "type": "double"}]}
FASTAVRO_CASES: dict[str, Any] = {  # one field type each, each field a record of its own
    "two_records": [_POINT, {"type": "record", "name": "Point3", "fields": [
        {"name": "x", "type": "double"}, {"name": "y", "type": "double"},
        {"name": "z", "type": "double", "default": 0.0}]}],
    "record_or_map": [_POINT, {"type": "map", "values": "double"}],
    "map_or_record": [{"type": "map", "values": "double"}, _POINT],
    "date_or_text": ["null", {"type": "int", "logicalType": "date"}, "string"],
    "list_or_bytes": [{"type": "array", "items": "int"}, "bytes"],
    "int_or_long": ["int", "long"],
    "long_or_double": ["long", "double"],
    "double_or_long": ["double", "long"],
    "time_or_text": [{"type": "long", "logicalType": "timestamp-millis"}, "string"],
    "uuid_or_text": [{"type": "string", "logicalType": "uuid"}, "string"],
    "decimal_or_double": [{"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}, "double"],
    "fixed_decimal": {"type": "fixed", "name": "Money", "size": 8, "logicalType": "decimal", "precision": 12,
                      "scale": 3},
    "fixed_decimal_or_bytes": [{"type": "fixed", "name": "Money", "size": 8, "logicalType": "decimal",
                                "precision": 12, "scale": 3}, "bytes"],
    "record_in_union": ["null", {"type": "record", "name": "Counter", "fields": [
        {"name": "count", "type": "int"}, {"name": "label", "type": ["null", "string"]}]}],
}


def single_field_record(name: str, field_type: Any) -> dict[str, Any]:
    return {"type": "record", "name": f"Case_{name}", "namespace": "test.cases",
            "fields": [{"name": "value", "type": field_type}]}


# The kitchen sink as a later version reads it: fields reordered, renamed (alias), dropped,
# added with defaults, promoted; enum symbols and union branches changed.
KITCHEN_SINK_READER: dict[str, Any] = {
    "type": "record", "name": "KitchenSink", "namespace": "other.namespace",
    "fields": [
        {"name": "text", "type": "bytes"},
        {"name": "blob", "type": "string"},
        {"name": "small", "type": "double"},
        {"name": "big", "type": "float"},
        {"name": "ratio", "type": "double"},
        {"name": "flag", "type": ["null", "boolean"]},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["GREEN", "RED", "PURPLE"],
                                    "default": "PURPLE"}},
        {"name": "numbers", "type": {"type": "array", "items": "long"}},
        {"name": "labels", "type": {"type": "map", "values": "bytes"}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "zip", "type": ["null", "string"], "default": None},
            {"name": "street", "type": "string"},
            {"name": "country", "type": "string", "default": "NL"},
        ]}},
        {"name": "maybe_words", "aliases": ["maybe_text"], "type": ["null", "string"], "default": None},
        {"name": "number", "type": ["null", "long", "double"], "default": None},
        {"name": "text_or_null", "type": "string", "default": "none"},
        {"name": "created", "type": "long"},
        {"name": "observed", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "birth_date", "type": "int"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "added_map", "type": {"type": "map", "values": "int"}, "default": {"one": 1}},
        {"name": "added_record", "type": "Address", "default": {"street": "Main", "zip": None, "country": "BE"}},
        {"name": "added_enum", "type": "Colour", "default": "GREEN"},
        {"name": "added_list", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "added_null", "type": ["null", "int"], "default": None},
        {"name": "zone", "type": "string", "default": "UTC"},
        {"name": "chain", "type": ["null", {"type": "record", "name": "Node", "fields": [
            {"name": "value", "type": "long"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ]}], "default": None},
    ],
}

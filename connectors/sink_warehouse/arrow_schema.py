"""Avro schema → Arrow schema, faithfully enough that Parquet readers see real types.

    Avro                               Arrow
    null / boolean / int / long        null / bool / int32 / int64
    float / double                     float32 / float64
    bytes / fixed(n)                   binary / fixed_size_binary(n)
    string, enum                       string (enum symbols kept in field metadata)
    ["null", T]                        T, nullable
    array<T> / map<T> / record         list<T> / map<string, T> / struct
    date, time-millis, time-micros     date32, time32[ms], time64[us]
    timestamp-millis / -micros         timestamp[ms|us, UTC]
    local-timestamp-millis / -micros   timestamp[ms|us] (no zone)
    decimal(p, s)                      decimal128(p, s) (decimal256 above 38 digits)
    uuid                               string

Unions of two or more non-null types and recursive records have no Parquet
equivalent: they raise :class:`SchemaMappingError` (a PermanentError: the record
goes to the dead-letter queue). Accepts plain ``.avsc`` JSON and the output of
``fastavro.parse_schema`` (``__fastavro_parsed``/``__named_schemas`` markers, full names).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from common import PermanentError

_PRIMITIVES: dict[str, pa.DataType] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}

_LOGICAL: dict[tuple[str, str], pa.DataType] = {
    ("int", "date"): pa.date32(),
    ("int", "time-millis"): pa.time32("ms"),
    ("long", "time-micros"): pa.time64("us"),
    ("long", "timestamp-millis"): pa.timestamp("ms", tz="UTC"),
    ("long", "timestamp-micros"): pa.timestamp("us", tz="UTC"),
    ("long", "local-timestamp-millis"): pa.timestamp("ms"),
    ("long", "local-timestamp-micros"): pa.timestamp("us"),
    ("string", "uuid"): pa.string(),
}

# Column type changes that old and new files can still be read together with.
# (DuckDB union_by_name and Athena both cast between these; checked in both orders.)
_WIDENINGS = {
    (pa.int32(), pa.int64()), (pa.float32(), pa.float64()),
    (pa.int32(), pa.float64()), (pa.int64(), pa.float64()),
}


class SchemaMappingError(PermanentError):
    """The writer schema cannot be stored as Arrow/Parquet, or conflicts with earlier files."""


def avro_to_arrow(schema: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a record schema's fields (value columns only)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise SchemaMappingError("the value schema is not an Avro record")
    named: dict[str, Any] = dict(schema.get("__named_schemas") or {})
    struct = _Mapper(named).record(schema, namespace="")
    return pa.schema(list(struct))


class _Mapper:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named  # full name -> definition, filled as definitions are met
        self.in_progress: set[str] = set()

    def record(self, schema: dict[str, Any], namespace: str) -> pa.StructType:
        full, namespace = self._define(schema, namespace)
        if full in self.in_progress:
            raise SchemaMappingError(f"recursive record {full} cannot be stored as Parquet")
        self.in_progress.add(full)
        try:
            fields = [self.field(f, namespace) for f in schema.get("fields", [])]
        finally:
            self.in_progress.discard(full)
        return pa.struct(fields)

    def field(self, avro_field: dict[str, Any], namespace: str) -> pa.Field:
        name = avro_field["name"]
        arrow_type, nullable, meta = self.type(avro_field["type"], namespace)
        if avro_field.get("doc"):
            meta = {**meta, "doc": str(avro_field["doc"])}
        return pa.field(name, arrow_type, nullable=nullable, metadata=meta or None)

    def type(self, avro: Any, namespace: str) -> tuple[pa.DataType, bool, dict[str, str]]:
        """(Arrow type, nullable, field metadata) of an Avro type."""
        if isinstance(avro, list):
            return self._union(avro, namespace)
        if isinstance(avro, str):
            if avro in _PRIMITIVES:
                return _PRIMITIVES[avro], avro == "null", {}
            return self.type(self._lookup(avro, namespace), namespace)
        if not isinstance(avro, dict):
            raise SchemaMappingError("malformed Avro type")
        kind = avro.get("type")
        logical = avro.get("logicalType")
        if logical == "decimal" and kind in ("bytes", "fixed"):
            precision, scale = int(avro["precision"]), int(avro.get("scale", 0))
            decimal = pa.decimal128 if precision <= 38 else pa.decimal256
            if kind == "fixed":
                self._define(avro, namespace)
            return decimal(precision, scale), False, {}
        if isinstance(kind, str) and (kind, logical) in _LOGICAL:
            return _LOGICAL[(kind, logical)], False, {}
        if kind == "record" or kind == "error":
            return self.record(avro, namespace), False, {}
        if kind == "enum":
            self._define(avro, namespace)
            return pa.string(), False, {"avro.enum.symbols": json.dumps(avro.get("symbols", []))}
        if kind == "fixed":
            self._define(avro, namespace)
            return pa.binary(int(avro["size"])), False, {}
        if kind == "array":
            item, item_nullable, _ = self.type(avro["items"], namespace)
            return pa.list_(pa.field("element", item, nullable=item_nullable)), False, {}
        if kind == "map":
            value, value_nullable, _ = self.type(avro["values"], namespace)
            return pa.map_(pa.string(), pa.field("value", value, nullable=value_nullable)), False, {}
        if kind in _PRIMITIVES or isinstance(kind, (dict, list)):
            return self.type(kind, namespace)  # {"type": "string"}, unknown logical types
        if isinstance(kind, str):
            return self.type(self._lookup(kind, namespace), namespace)
        raise SchemaMappingError("malformed Avro type")

    def _union(self, branches: list[Any], namespace: str) -> tuple[pa.DataType, bool, dict[str, str]]:
        others = [b for b in branches if b != "null" and not (isinstance(b, dict) and b.get("type") == "null")]
        if len(others) > 1:
            raise SchemaMappingError("unions of several non-null types have no Parquet equivalent")
        if not others:
            return pa.null(), True, {}
        arrow_type, _, meta = self.type(others[0], namespace)
        return arrow_type, len(others) < len(branches), meta

    def _define(self, schema: dict[str, Any], namespace: str) -> tuple[str, str]:
        """Register a named type; return (full name, namespace for its children)."""
        name = str(schema.get("name", ""))
        if "." in name:
            full = name
        else:
            ns = schema.get("namespace", namespace) or ""
            full = f"{ns}.{name}" if ns else name
        self.named.setdefault(full, schema)
        return full, full.rpartition(".")[0]

    def _lookup(self, name: str, namespace: str) -> Any:
        for candidate in (f"{namespace}.{name}" if namespace else name, name):
            if candidate in self.named:
                if candidate in self.in_progress:
                    raise SchemaMappingError(f"recursive record {candidate} cannot be stored as Parquet")
                return self.named[candidate]
        raise SchemaMappingError(f"unknown Avro type name {name}")


ColumnTypes = dict[str, list[pa.DataType]]  # column name -> every type a topic's files have for it


def add_column_types(known: ColumnTypes, schema: pa.Schema) -> None:
    """Add the column types of ``schema`` to ``known`` (NULL columns fit every type)."""
    for field in schema:
        types = known.setdefault(field.name, [])
        if not pa.types.is_null(field.type) and not any(t.equals(field.type) for t in types):
            types.append(field.type)


def evolution_conflicts(known: ColumnTypes, schema: pa.Schema) -> list[str]:
    """Columns of ``schema`` (``column.field`` inside records) that readers cannot combine by
    name with some type earlier files have. Every known type is compared, so the verdict does
    not depend on the order the earlier schemas were met in."""
    conflicts = []
    for field in schema:
        for before in known.get(field.name, ()):
            path = _conflict(before, field.type, field.name)
            if path is not None:
                conflicts.append(path)
                break
    return conflicts


def _conflict(before: pa.DataType, after: pa.DataType, path: str) -> str | None:
    """Where ``after`` cannot be read together with ``before`` (None: it can).

    Nested fields are matched by name like columns (DuckDB ``union_by_name``, Athena): a
    record, or the record items of an array or map, may gain or lose fields (older rows
    read them as NULL), but a field both have must keep a compatible type."""
    if before.equals(after) or pa.types.is_null(before) or pa.types.is_null(after):
        return None
    if (before, after) in _WIDENINGS or (after, before) in _WIDENINGS:
        return None
    if pa.types.is_struct(before) and pa.types.is_struct(after):
        return _struct_conflict(before, after, path)
    if pa.types.is_map(before) and pa.types.is_map(after):
        return _conflict(before.item_type, after.item_type, f"{path}.value")  # keys are always strings
    if pa.types.is_list(before) and pa.types.is_list(after):
        return _conflict(before.value_type, after.value_type, f"{path}.element")
    return path


def _struct_conflict(before: pa.StructType, after: pa.StructType, path: str) -> str | None:
    for field in after:
        index = before.get_field_index(field.name)
        if index < 0:
            continue  # a new field
        conflict = _conflict(before.field(index).type, field.type, f"{path}.{field.name}")
        if conflict is not None:
            return conflict
    return None

"""Sink records → Arrow record batches, built column by column.

Column-wise building (one Python list per column, one ``pa.array`` call each) is
several times faster than ``pa.Table.from_pylist``, and this is the hot path.
Every row carries where it came from (healthcare rule 7, audit trail):
``_kafka_topic``, ``_kafka_partition``, ``_kafka_offset``, ``_kafka_timestamp``,
``_kafka_key`` and, optionally, ``_kafka_headers``.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from common import SinkRecord
from connectors.sink_warehouse.arrow_schema import SchemaMappingError

KAFKA_PREFIX = "_kafka_"
KAFKA_FIELDS = (
    pa.field("_kafka_topic", pa.string(), nullable=False),
    pa.field("_kafka_partition", pa.int32(), nullable=False),
    pa.field("_kafka_offset", pa.int64(), nullable=False),
    pa.field("_kafka_timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("_kafka_key", pa.string()),
)
# A list, not a map: Kafka allows the same header name more than once.
HEADERS_FIELD = pa.field(
    "_kafka_headers",
    pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])),
)


@dataclass(frozen=True)
class RowLayout:
    """The row schema of one writer schema: its value columns, then the Kafka columns."""

    schema: pa.Schema
    value_fields: tuple[pa.Field, ...]
    include_headers: bool
    _row_getter: operator.itemgetter = field(init=False, repr=False, compare=False)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        names = [f.name for f in self.value_fields]
        # itemgetter over all names returns a tuple per row in one C call (a 1-tuple needs a wrapper).
        getter = operator.itemgetter(*names) if len(names) > 1 else (lambda v: (v[names[0]],) if names else ())
        object.__setattr__(self, "_row_getter", getter)

    @classmethod
    def for_values(cls, value_schema: pa.Schema, include_headers: bool) -> RowLayout:
        clashes = [f.name for f in value_schema if f.name.startswith(KAFKA_PREFIX)]
        if clashes:
            raise SchemaMappingError(f"value fields {clashes} clash with the Kafka metadata columns")
        extra = KAFKA_FIELDS + ((HEADERS_FIELD,) if include_headers else ())
        return cls(pa.schema(list(value_schema) + list(extra)), tuple(value_schema), include_headers)

    def record_batch(self, records: Sequence[SinkRecord]) -> pa.RecordBatch:
        """The rows of ``records`` (all of one topic-partition)."""
        arrays = self.value_arrays(records) + self.kafka_arrays(records)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def table(self, values: pa.Table, records: Sequence[SinkRecord]) -> pa.Table:
        """The rows of ``records`` whose value columns were decoded in bulk into ``values``."""
        columns = list(values.columns) + self.kafka_arrays(records)
        return pa.Table.from_arrays(columns, schema=self.schema)

    def value_arrays(self, records: Sequence[SinkRecord]) -> list[pa.Array]:
        """The value columns of ``records``, from their decoded values."""
        values = [r.value or {} for r in records]
        try:
            # Rows to columns with C-level loops: the hot path.
            columns: list[Sequence[Any]] = list(zip(*map(self._row_getter, values))) if values else []
        except KeyError:  # a value without some field (never from an Avro decode): slow path
            columns = [[v.get(f.name) for v in values] for f in self.value_fields]
        if not columns:
            columns = [[] for _ in self.value_fields]
        return [self._value_column(col, f) for col, f in zip(columns, self.value_fields)]

    def kafka_arrays(self, records: Sequence[SinkRecord]) -> list[pa.Array]:
        """The Kafka metadata columns of ``records`` (all of one topic-partition)."""
        arrays: list[pa.Array] = []
        if not records:
            return [pa.array([], f.type) for f in self.schema if f.name.startswith(KAFKA_PREFIX)]
        first = records[0]
        arrays.append(pa.repeat(pa.scalar(first.topic, pa.string()), len(records)))
        arrays.append(pa.repeat(pa.scalar(first.partition, pa.int32()), len(records)))
        arrays.append(pa.array([r.offset for r in records], pa.int64()))
        arrays.append(pa.array([r.timestamp_ms for r in records], pa.timestamp("ms", tz="UTC")))
        arrays.append(pa.array([r.key for r in records], pa.string()))
        if self.include_headers:
            headers = [[{"key": k, "value": v} for k, v in r.headers] for r in records]
            arrays.append(pa.array(headers, HEADERS_FIELD.type))
        return arrays

    @staticmethod
    def _value_column(column: Sequence[Any], arrow_field: pa.Field) -> pa.Array:
        name = arrow_field.name
        try:
            return pa.array(column, arrow_field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
        # Rare shapes (uuid.UUID from the uuid logical type) take the slow path;
        # the error names the field, never the values (no PHI in messages).
        try:
            return pa.array([_plain(x) for x in column], arrow_field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            raise SchemaMappingError(f"values of field {name} do not match its type {arrow_field.type}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

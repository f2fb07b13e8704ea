"""File formats: Parquet (default), Avro object container files and JSON Lines.

A format first *prepares* a writer schema (once per schema ref: this is where an
unmappable schema is rejected) and then *writes* the records of one object into
a binary file object that the storage provides.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import uuid
from collections.abc import Sequence
from typing import IO, Any, Protocol

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from common import SinkRecord
from connectors.sink_warehouse.arrow_schema import SchemaMappingError, avro_to_arrow
from connectors.sink_warehouse.avro_arrow import plain_schema
from connectors.sink_warehouse.columns import RowLayout


class FileFormat(Protocol):
    extension: str

    def prepare(self, avro_schema: dict[str, Any]) -> Any:
        """Per-schema state for :meth:`write`; raises SchemaMappingError."""

    def arrow_schema(self, prepared: Any) -> pa.Schema | None:
        """The row schema, for formats that readers combine by column name."""

    def write(self, out: IO[bytes], prepared: Any, records: Sequence[SinkRecord],
              values: pa.Table | None = None) -> None:
        """Write the rows of ``records`` (one topic-partition, one writer schema); ``values``
        holds their value columns when they were decoded in bulk (Parquet only)."""


class ParquetFormat:
    extension = "parquet"

    def __init__(self, compression: str = "zstd", row_group_size: int = 131_072, include_headers: bool = False):
        self.compression = compression
        self.row_group_size = row_group_size
        self.include_headers = include_headers

    def prepare(self, avro_schema: dict[str, Any]) -> RowLayout:
        return RowLayout.for_values(avro_to_arrow(avro_schema), self.include_headers)

    def arrow_schema(self, prepared: RowLayout) -> pa.Schema:
        return prepared.schema

    def write(self, out: IO[bytes], prepared: RowLayout, records: Sequence[SinkRecord],
              values: pa.Table | None = None) -> None:
        with pq.ParquetWriter(out, prepared.schema, compression=self.compression) as writer:
            if values is not None:
                writer.write_table(prepared.table(values, records), row_group_size=self.row_group_size)
                return
            # One row group per slice keeps memory at one row group of Arrow data.
            for start in range(0, len(records), self.row_group_size):
                batch = prepared.record_batch(records[start:start + self.row_group_size])
                writer.write_batch(batch, row_group_size=self.row_group_size)


_AVRO_KAFKA_FIELDS = [
    {"name": "_kafka_topic", "type": "string"},
    {"name": "_kafka_partition", "type": "int"},
    {"name": "_kafka_offset", "type": "long"},
    {"name": "_kafka_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "_kafka_key", "type": ["null", "string"], "default": None},
]
_AVRO_HEADERS_FIELD = {
    "name": "_kafka_headers",
    "type": {"type": "array", "items": {
        "type": "record", "name": "KafkaHeader", "namespace": "labconnect.warehouse",
        "fields": [{"name": "key", "type": "string"}, {"name": "value", "type": "bytes"}],
    }},
}


class AvroFormat:
    """Avro object container files: the writer schema plus the Kafka fields, deflate-compressed
    (deflate is in the standard library; zstd/snappy would need extra packages)."""

    extension = "avro"

    def __init__(self, include_headers: bool = False, codec: str = "deflate") -> None:
        self.include_headers = include_headers
        self.codec = codec
        # fastavro draws a random sync marker per file; one per process makes a rewrite of the same
        # records byte-identical, so a retried round can skip what it already uploaded.
        self.sync_marker = os.urandom(16)

    def prepare(self, avro_schema: dict[str, Any]) -> dict[str, Any]:
        value = plain_schema(avro_schema)
        if not isinstance(value, dict) or value.get("type") != "record":
            raise SchemaMappingError("the value schema is not an Avro record")
        fields = list(value.get("fields", []))
        if any(str(f.get("name", "")).startswith("_kafka_") for f in fields):
            raise SchemaMappingError("value fields clash with the Kafka metadata columns")
        fields += _AVRO_KAFKA_FIELDS + ([_AVRO_HEADERS_FIELD] if self.include_headers else [])
        try:
            return fastavro.parse_schema({**value, "fields": fields})
        except Exception as exc:  # fastavro's SchemaParseException and friends
            raise SchemaMappingError(f"invalid Avro schema: {type(exc).__name__}") from None

    def arrow_schema(self, prepared: dict[str, Any]) -> None:
        return None

    def write(self, out: IO[bytes], prepared: dict[str, Any], records: Sequence[SinkRecord],
              values: pa.Table | None = None) -> None:
        headers = self.include_headers
        rows = (
            {
                **(r.value or {}),
                "_kafka_topic": r.topic, "_kafka_partition": r.partition, "_kafka_offset": r.offset,
                "_kafka_timestamp": r.timestamp_ms, "_kafka_key": r.key,
                **({"_kafka_headers": [{"key": k, "value": v} for k, v in r.headers]} if headers else {}),
            }
            for r in records
        )
        try:
            fastavro.writer(out, prepared, rows, codec=self.codec, sync_marker=self.sync_marker)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # fastavro may echo the value: keep only the class (no PHI).
            raise SchemaMappingError(f"record does not match its writer schema: {type(exc).__name__}") from None


class JsonLinesFormat:
    """One JSON object per line: instants as ISO 8601, bytes as base64, decimals as strings."""

    extension = "jsonl"

    def __init__(self, include_headers: bool = False) -> None:
        self.include_headers = include_headers
        self._encoder = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)

    def prepare(self, avro_schema: dict[str, Any]) -> None:
        return None

    def arrow_schema(self, prepared: None) -> None:
        return None

    def write(self, out: IO[bytes], prepared: None, records: Sequence[SinkRecord],
              values: pa.Table | None = None) -> None:
        encode = self._encoder.encode
        lines = []
        for r in records:
            row = dict(r.value or {})
            row.update(_kafka_topic=r.topic, _kafka_partition=r.partition, _kafka_offset=r.offset,
                       _kafka_timestamp=r.timestamp_ms, _kafka_key=r.key)
            if self.include_headers:
                row["_kafka_headers"] = [{"key": k, "value": v} for k, v in r.headers]
            lines.append(encode(row))
        out.write(("\n".join(lines) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def make_format(name: str, *, compression: str = "zstd", row_group_size: int = 131_072,
                include_headers: bool = False) -> FileFormat:
    if name == "parquet":
        return ParquetFormat(compression, row_group_size, include_headers)
    if name == "avro":
        return AvroFormat(include_headers, codec="null" if compression == "none" else "deflate")
    if name == "jsonl":
        return JsonLinesFormat(include_headers)
    raise ValueError(f"unknown warehouse format {name}")

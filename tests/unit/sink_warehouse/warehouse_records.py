"""Decoded LabResult records as the runtime hands them to a sink task, and a task context.

Shared by the unit and integration tests of the warehouse sink (a uniquely named module:
both test folders have a conftest.py)."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from common.records import SinkRecord
from common.serde import SINGLE_OBJECT_MARKER, SerializationError, avro_fingerprint

ROOT = Path(__file__).resolve().parents[3]
HOUR_MS = 3_600_000
T0 = 1_718_000_000_000  # 2024-06-10T06:13:20Z


def lab_result_schema() -> dict[str, Any]:
    return json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())


def with_extra_field(schema: dict[str, Any], name: str, avro_type: Any = None) -> dict[str, Any]:
    """The schema plus one optional field (a compatible evolution)."""
    evolved = copy.deepcopy(schema)
    evolved["fields"].append({"name": name, "type": avro_type or ["null", "string"], "default": None})
    return evolved


class FakeContext:
    """Resolves ``fp:<hex>`` refs like the runtime does (fastavro-parsed schemas)."""

    connector_name = "sink-warehouse"
    task_id = 0

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self.reported: list[tuple[int, str, str]] = []  # (offset, stage, message) the task dead-lettered

    def report(self, record: SinkRecord, error: BaseException, stage: str = "TASK_PUT") -> None:
        self.reported.append((record.offset, stage, str(error)))

    def register(self, schema: dict[str, Any]) -> str:
        ref = "fp:" + avro_fingerprint(schema).hex()
        self.schemas[ref] = fastavro.parse_schema(copy.deepcopy(schema))
        return ref

    def writer_schema(self, ref: str) -> dict[str, Any]:
        return self.schemas[ref]

    def decode(self, raw_value: bytes) -> dict[str, Any]:
        if raw_value[:2] != SINGLE_OBJECT_MARKER or len(raw_value) < 10:
            raise SerializationError("not Avro single-object encoded")
        buf = io.BytesIO(raw_value[10:])
        try:
            return fastavro.schemaless_reader(buf, self.schemas["fp:" + raw_value[2:10].hex()], None)
        except Exception as exc:
            raise SerializationError(f"cannot decode Avro body: {type(exc).__name__}") from None


def encoded(ref: str, schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    """The value as the runtime receives it: Avro single-object encoding."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), value)
    return SINGLE_OBJECT_MARKER + bytes.fromhex(ref[3:]) + buf.getvalue()


def lab_value(i: int, ts_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-{i}", "event_type": "LAB_RESULT_CREATED", "timestamp": ts_ms, "version": 1,
        "patient_id": f"P{i % 97:05d}", "test_id": "718-7", "test_name": "Hemoglobin",
        "result_value": f"{12 + i % 5}.{i % 10}", "unit": "g/dL", "reference_range": "12.0-17.5",
        "status": "VERIFIED", "metadata": {"lab": "main"}, "accession": f"ACC{i // 20}",
        "loinc_code": "718-7", "abnormal_flag": None if i % 3 else "H", "result_status": "F",
        "report_status": "final", "observed_time": ts_ms - 60_000, "source_system": "LIS1",
        "source_message_id": f"MSG{i // 20}",
    }


def decoded(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """The value after an Avro round trip (timestamp-millis becomes a UTC datetime)."""
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, value)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, parsed, None)


RecordFactory = Callable[..., list[SinkRecord]]


def records_factory(context: FakeContext) -> RecordFactory:
    """``make_records(offsets, ts=lambda i: ..., schema=..., topic=..., partition=..., extra=...)``;
    ``extra`` adds fields: a dict, or a function of the offset."""

    def make(offsets: range | list[int], *, ts: Callable[[int], int] = lambda i: T0 + i * 1000,
             schema: dict[str, Any] | None = None, topic: str = "lab-results", partition: int = 0,
             extra: dict[str, Any] | Callable[[int], dict[str, Any]] | None = None) -> list[SinkRecord]:
        schema = schema or lab_result_schema()
        ref = context.register(schema)
        out = []
        for off in offsets:
            fields = extra(off) if callable(extra) else extra or {}
            value = decoded(schema, {**lab_value(off, ts(off)), **fields})
            # Both forms: the runtime hands Parquet sinks the bytes and other formats the value.
            out.append(SinkRecord(topic=topic, partition=partition, offset=off, timestamp_ms=ts(off),
                                  key=value["patient_id"], value=value, raw_key=None,
                                  raw_value=encoded(ref, schema, value),
                                  headers=[("source", b"LIS1")], schema=ref))
        return out

    return make

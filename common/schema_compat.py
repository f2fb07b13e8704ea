"""BACKWARD compatibility of Avro schemas: can a reader with the new schema read data
written with the old one? Checked structurally (Avro's resolution rules for records)
and by decoding generated old data with the new schema through fastavro."""

from __future__ import annotations

import io
from typing import Any

import fastavro
from fastavro.utils import generate_many

_PROMOTIONS = {("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
               ("float", "double"), ("string", "bytes"), ("bytes", "string")}


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, dict):
        return str(avro_type.get("type"))
    if isinstance(avro_type, list):
        return "union"
    return str(avro_type)


def backward_problems(old: dict[str, Any], new: dict[str, Any], samples: int = 50) -> list[str]:
    """Reasons the new schema cannot read data written with the old one (empty = compatible)."""
    problems: list[str] = []
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    for field in new.get("fields", []):
        if field["name"] not in old_fields and "default" not in field:
            problems.append(f"field {field['name']} was added without a default")
            continue
        if field["name"] in old_fields:
            before, after = _type_name(old_fields[field["name"]]["type"]), _type_name(field["type"])
            if before != after and (before, after) not in _PROMOTIONS and after != "union":
                problems.append(f"field {field['name']} changed type {before} -> {after}")
    if problems:
        return problems
    writer = fastavro.parse_schema(old)
    reader = fastavro.parse_schema(new)
    for record in generate_many(old, samples):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer, record)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, writer, reader)
        except Exception as exc:
            return [f"old data does not resolve to the new schema: {type(exc).__name__}: {exc}"]
    return []

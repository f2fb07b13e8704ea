"""The questions the generators ask of a parsed (``fastavro.parse_schema``) schema."""

from __future__ import annotations

from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
COMPLEX = frozenset({"record", "enum", "fixed", "array", "map"})
NAMED = frozenset({"record", "enum", "fixed"})


class Unsupported(Exception):
    """The generator does not cover this schema (pair): fastavro handles it."""


class NamedTypes:
    """The named types (record, enum, fixed) of one schema by full name, so references to
    them (a name in place of a definition) resolve to their definition."""

    def __init__(self, root: Any) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        self._collect(root)

    def _collect(self, schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in NAMED:
                if schema["name"] in self.by_name:
                    return
                self.by_name[schema["name"]] = schema
            if kind == "record":
                for field in schema["fields"]:
                    self._collect(field["type"])
            elif kind == "array":
                self._collect(schema["items"])
            elif kind == "map":
                self._collect(schema["values"])

    def resolve(self, schema: Any) -> Any:
        """The definition behind a named reference; any other schema unchanged."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            try:
                return self.by_name[schema]
            except KeyError:
                raise Unsupported(f"unknown type {schema}") from None
        if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
            raise Unsupported("nested type definition")  # parse_schema flattens the usual ones
        if isinstance(schema, dict) and schema["type"] not in PRIMITIVES | COMPLEX:
            return self.resolve(schema["type"])
        return schema


def kind_of(schema: Any) -> str:
    """``"union"`` for a list, else the Avro type name of a resolved schema."""
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema["type"]
    else:
        kind = schema
    if kind not in PRIMITIVES and kind not in COMPLEX:
        raise Unsupported(f"type {kind}")
    return str(kind)


def logical_key(schema: Any) -> str | None:
    """fastavro's key for a logical type (``"long-timestamp-millis"``), or None."""
    if isinstance(schema, dict) and "logicalType" in schema:
        return f"{schema['type']}-{schema['logicalType']}"
    return None


def describe(schema: Any) -> str:
    """A short description of a schema for a comment in the generated source."""
    if isinstance(schema, list):
        return "[" + ", ".join(describe(branch) for branch in schema) + "]"
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind in NAMED:
            return f"{kind} {schema['name']}"
        if kind == "array":
            return f"array<{describe(schema['items'])}>"
        if kind == "map":
            return f"map<{describe(schema['values'])}>"
        if "logicalType" in schema:
            return f"{kind} ({schema['logicalType']})"
        return str(kind)
    return str(schema)

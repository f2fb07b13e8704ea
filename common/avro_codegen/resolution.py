"""Whether a writer's type can be read as a reader's, as fastavro decides it.

fastavro matches types by kind with the promotions of the Avro specification
(int → long, float, double; long → float, double; float → double; string ↔ bytes), and
named types by their unqualified names. Each answer here is True, False, or None when
the generator is not sure how fastavro decides (reader aliases of named types, named
types of different kinds): the generated code then leaves the value to fastavro.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.avro_codegen.schemas import NAMED, kind_of

PROMOTIONS = {
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
}


def matches(writer: Any, reader: Any, resolve_writer: Callable[[Any], Any],
            resolve_reader: Callable[[Any], Any]) -> bool | None:
    """fastavro's ``match_types`` for resolved or named schemas (see the module docstring)."""
    if isinstance(writer, list) or isinstance(reader, list):
        return True
    writer, reader = resolve_writer(writer), resolve_reader(reader)
    w_kind, r_kind = kind_of(writer), kind_of(reader)
    if w_kind in NAMED and r_kind in NAMED:
        if w_kind != r_kind:
            return None
        if w_kind == "fixed" and writer["size"] != reader["size"]:
            return False
        if _unqualified(writer["name"]) == _unqualified(reader["name"]):
            return True
        return None if reader.get("aliases") else False
    if w_kind == r_kind == "array":
        return matches(writer["items"], reader["items"], resolve_writer, resolve_reader)
    if w_kind == r_kind == "map":
        return matches(writer["values"], reader["values"], resolve_writer, resolve_reader)
    if w_kind in NAMED or r_kind in NAMED or w_kind in ("array", "map") or r_kind in ("array", "map"):
        return False
    return w_kind == r_kind or (w_kind, r_kind) in PROMOTIONS


def first_match(writer: Any, branches: list[Any], resolve_writer: Callable[[Any], Any],
                resolve_reader: Callable[[Any], Any]) -> int | None:
    """The reader union branch fastavro reads ``writer`` as: the first that matches. None
    when no branch matches, or when the generator is unsure of one before the match."""
    for index, branch in enumerate(branches):
        answer = matches(writer, branch, resolve_writer, resolve_reader)
        if answer is None:
            return None
        if answer:
            return index
    return None


def _unqualified(name: str) -> str:
    return name.rsplit(".", 1)[-1]

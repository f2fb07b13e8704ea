"""Which branch of a union fastavro's writer takes for a value, decided per Python type.

fastavro tries the branches in order and takes the first whose validation accepts the
value (after the branch's logical-type conversion), except that a ``float`` branch gives
way to a later ``double``, and a matching record to any later branch that matches too.
The generated encoder tests the exact type of the value instead; for each type this module
lists the branches to try, each with how sure the test is:

* ``ALWAYS``: fastavro accepts every value of this type on the branch;
* a guard (``"len({x}) == 16"``): it accepts exactly the values passing the guard;
* ``MAYBE``: it depends on the contents (a record, a map, a converted logical value): the
  branch's encoder checks them and falls back to fastavro when they do not pass. Nothing
  after a ``MAYBE`` branch is tried: fastavro would only get there for a value the
  branch's encoder rejects anyway.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.avro_codegen.runtime import INT_MAX, INT_MIN, LONG_MAX, LONG_MIN
from common.avro_codegen.schemas import Unsupported, kind_of, logical_key

ALWAYS = "True"
MAYBE = "maybe"

# The types the encoder dispatches on, by exact type (a subclass goes to fastavro).
FAST_TYPES: tuple[type, ...] = (type(None), bool, int, float, str, bytes, dict, list, datetime.datetime,
                                datetime.date, datetime.time, uuid.UUID, decimal.Decimal)

# Types a logical type's conversion turns into its base type (fastavro's LOGICAL_WRITERS);
# a value of any other type passes through the conversion unchanged.
CONVERTED_BY = {
    "long-timestamp-millis": (datetime.datetime,),
    "long-timestamp-micros": (datetime.datetime,),
    "long-local-timestamp-millis": (datetime.datetime,),
    "long-local-timestamp-micros": (datetime.datetime,),
    "int-date": (datetime.date, datetime.datetime, str),
    "int-time-millis": (datetime.time,),
    "long-time-micros": (datetime.time,),
    "string-uuid": (uuid.UUID,),
    "bytes-decimal": (decimal.Decimal,),
    "fixed-decimal": (decimal.Decimal,),
}


@dataclass(frozen=True)
class Choice:
    index: int     # the branch
    guard: str     # ALWAYS, MAYBE or a guard expression over ``{x}``


def _base_acceptance(schema: Any, kind: str, pytype: type) -> str | None:
    """How fastavro's validation of ``kind`` treats an unconverted value of ``pytype``
    (None: never accepts it)."""
    if kind == "null":
        return ALWAYS if pytype is type(None) else None
    if kind == "boolean":
        return ALWAYS if pytype is bool else None
    if kind == "int":
        return f"{INT_MIN} <= {{x}} <= {INT_MAX}" if pytype is int else None
    if kind == "long":
        return f"{LONG_MIN} <= {{x}} <= {LONG_MAX}" if pytype is int else None
    if kind in ("float", "double"):
        return ALWAYS if pytype in (int, float) else None
    if kind == "string":
        return ALWAYS if pytype is str else None
    if kind == "bytes":
        return ALWAYS if pytype is bytes else None
    if kind == "fixed":
        return f"len({{x}}) == {int(schema['size'])}" if pytype is bytes else None
    if kind == "enum":
        symbols = repr(tuple(schema["symbols"])).replace("{", "{{").replace("}", "}}")
        return f"{{x}} in {symbols}" if pytype is str else None
    if kind == "array":
        return MAYBE if pytype in (list, bytes) else None  # bytes is a Sequence to fastavro
    if kind in ("map", "record"):
        return MAYBE if pytype is dict else None
    raise Unsupported(f"{kind} in a union")


def acceptance(schema: Any, pytype: type, logical_writers: dict[str, Callable[..., Any]]) -> str | None:
    """How fastavro's writer treats a value of exactly ``pytype`` on this (resolved) branch."""
    key = logical_key(schema)
    if key in logical_writers:
        if key not in CONVERTED_BY:
            raise Unsupported(f"logical type {key}")
        if pytype in CONVERTED_BY[key]:
            return MAYBE
    return _base_acceptance(schema, kind_of(schema), pytype)


def union_choices(branches: list[Any], resolve: Callable[[Any], Any],
                  logical_writers: dict[str, Callable[..., Any]]) -> dict[type, list[Choice]]:
    """For each Python type, the branches the encoder tries in order (see the module docstring)."""
    resolved = [resolve(branch) for branch in branches]
    if any(isinstance(branch, list) for branch in resolved):
        raise Unsupported("union inside a union")
    kinds = [kind_of(branch) for branch in resolved]
    choices: dict[type, list[Choice]] = {}
    for pytype in FAST_TYPES:
        tried: list[Choice] = []
        for index, branch in enumerate(resolved):
            guard = acceptance(branch, pytype, logical_writers)
            if guard is None:
                continue
            if kinds[index] == "float" and guard == ALWAYS and "double" in kinds[index + 1:]:
                index = kinds.index("double", index + 1)  # fastavro prefers the double
            if kinds[index] == "record" and any(
                    acceptance(later, pytype, logical_writers) is not None for later in resolved[index + 1:]):
                break  # fastavro goes on past a matching record: leave such a union to it
            tried.append(Choice(index, guard))
            if guard in (ALWAYS, MAYBE):
                break
        if tried:
            choices[pytype] = tried
    return choices

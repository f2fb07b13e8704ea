"""Writes the source of one schema's encoder: straight-line code per field.

The encoder takes only what fastavro would both accept (its union validation included)
and write the same way: values of the exact builtin types, ints in range, known enum
symbols. Anything else raises, and the generated function hands the whole value to
fastavro (``reference``), so an unusual value gets fastavro's bytes or fastavro's error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.avro_codegen import runtime
from common.avro_codegen.schemas import NamedTypes, Unsupported, describe, kind_of, logical_key
from common.avro_codegen.source import Function, Module
from common.avro_codegen.union_choice import ALWAYS, MAYBE, union_choices

# The Python type each Avro type is written from; a logical type's conversion runs on anything else.
BASE_TYPE = {"int": int, "long": int, "string": str, "bytes": bytes, "fixed": bytes}
RUNTIME_NAMES = {name: getattr(runtime, name) for name in (
    "Unusual", "SMALL_LONG", "SMALL_LENGTH", "long_bytes", "int_bytes", "float_bytes", "double_bytes")}


def _length(fn: Function, sized: str) -> str:
    """Expression: the varint of ``len(sized)`` (one byte up to 63), len() called once."""
    n = fn.fresh("n")
    return f"SMALL_LENGTH[{n}] if ({n} := len({sized})) < 64 else long_bytes({n})"


def _index_bytes(index: int) -> bytes:
    if index >= 64:
        raise Unsupported("union with more than 64 branches")
    return bytes([index << 1])


def _comment(text: str) -> str:
    # Names come from schemas, possibly a registry's: keep the comment to one harmless line.
    return "".join(c if c.isprintable() else "?" for c in text)[:120]


class EncoderGenerator:
    def __init__(self, schema: Any, logical_writers: dict[str, Callable[..., Any]]) -> None:
        self.schema = schema
        self.names = NamedTypes(schema)
        self.logical_writers = logical_writers
        self.module = Module(f"Avro encoder of {_comment(describe(schema))}", RUNTIME_NAMES)
        self._record_functions: dict[str, str] = {}

    def generate(self) -> Module:
        fn = self.module.function("def encode(value):")
        fn.line('"""The Avro binary encoding of value (fastavro\'s, for anything unusual)."""')
        with fn.block("try:"):
            fn.line("out = []")
            fn.line("append = out.append")
            root = self.names.resolve(self.schema)
            if kind_of(root) == "record":
                self.record_fields(fn, root, "value")
            else:
                self.value(fn, root, "value")
            fn.line('return b"".join(out)')
        with fn.block("except Exception:"):
            fn.line("return reference(value)")
        return self.module

    # ------------------------------------------------------------------ values
    def value(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        """Append the encoding of the Python value named ``x`` to the output; ``checked`` is its
        exact type when a union's test already made sure of it."""
        schema = self.names.resolve(schema)
        kind = kind_of(schema)
        key = logical_key(schema)
        if key in self.logical_writers:
            prepare = fn.const(self.logical_writers[key], "prepare")
            base = BASE_TYPE.get(kind)
            if base is None:
                raise Unsupported(f"logical type {key}")
            if checked is None:
                fn.line(f"if type({x}) is not {base.__name__}: {x} = {prepare}({x}, {fn.const(schema, 'schema')})")
            elif checked is not base:
                fn.line(f"{x} = {prepare}({x}, {fn.const(schema, 'schema')})")
                checked = None
        getattr(self, f"write_{kind}")(fn, schema, x, checked)

    def write_null(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        if checked is not type(None):
            fn.line(f"if {x} is not None: raise Unusual")

    def write_boolean(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        with fn.block(f"if {x} is True:"):
            fn.line('append(b"\\x01")')
        with fn.block(f"elif {x} is False:"):
            fn.line('append(b"\\x00")')
        with fn.block("else:"):
            fn.line("raise Unusual")

    def write_int(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        fn.line(f"append(SMALL_LONG[{x} + 64] if type({x}) is int and -64 <= {x} < 64 else int_bytes({x}))")

    def write_long(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        fn.line(f"append(SMALL_LONG[{x} + 64] if type({x}) is int and -64 <= {x} < 64 else long_bytes({x}))")

    def write_float(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        fn.line(f"append(float_bytes({x}))")

    def write_double(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        fn.line(f"append(double_bytes({x}))")

    def write_string(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        b = fn.fresh("b")
        if checked is not str:
            fn.line(f"if type({x}) is not str: raise Unusual")
        fn.line(f"{b} = {x}.encode()")
        fn.line(f"append({_length(fn, b)})")
        fn.line(f"append({b})")

    def write_bytes(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        if checked is not bytes:
            fn.line(f"if type({x}) is not bytes: raise Unusual")
        fn.line(f"append({_length(fn, x)})")
        fn.line(f"append({x})")

    def write_fixed(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        fn.line(f"if type({x}) is not bytes or len({x}) != {int(schema['size'])}: raise Unusual")
        fn.line(f"append({x})")

    def write_enum(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        symbols = schema["symbols"]
        if len(set(symbols)) != len(symbols):
            raise Unsupported("repeated enum symbol")
        index = {symbol: runtime.long_bytes(i) for i, symbol in enumerate(symbols)}
        fn.line(f"append({fn.const(index, 'enum')}[{x}])  # an unknown symbol raises KeyError")

    def write_array(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        item = fn.fresh("item")
        fn.line(f"if type({x}) is not list: raise Unusual")
        with fn.block(f"if {x}:  # one block of len() items, then the empty block"):
            fn.line(f"append({_length(fn, x)})")
            with fn.block(f"for {item} in {x}:"):
                self.value(fn, schema["items"], item)
        fn.line('append(b"\\x00")')

    def write_map(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        key, item = fn.fresh("key"), fn.fresh("item")
        fn.line(f"if type({x}) is not dict: raise Unusual")
        with fn.block(f"if {x}:  # one block of len() entries, then the empty block"):
            fn.line(f"append({_length(fn, x)})")
            with fn.block(f"for {key}, {item} in {x}.items():"):
                self.write_string(fn, "string", key)
                self.value(fn, schema["values"], item)
        fn.line('append(b"\\x00")')

    def write_union(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        choices = union_choices(schema, self.names.resolve, self.logical_writers)
        keyword = "if"
        for pytype, tried in choices.items():
            test = f"{x} is None" if pytype is type(None) else f"type({x}) is {self._type_name(fn, pytype)}"
            for choice in tried:
                condition = test if choice.guard in (ALWAYS, MAYBE) else f"{test} and {choice.guard.format(x=x)}"
                with fn.block(f"{keyword} {condition}:  # {_comment(describe(schema[choice.index]))}"):
                    fn.line(f"append({_index_bytes(choice.index)!r})")
                    self.value(fn, schema[choice.index], x, pytype)
                keyword = "elif"
        if keyword == "if":
            fn.line("raise Unusual")
        else:
            with fn.block("else:"):
                fn.line("raise Unusual")

    def write_record(self, fn: Function, schema: Any, x: str, checked: type | None = None) -> None:
        name = self._record_functions.get(schema["name"])
        if name is None:
            name = self._record_functions[schema["name"]] = self.module.fresh("write_record_")
            inner = self.module.function(f"def {name}(append, value):")
            inner.line(f"# {_comment(schema['name'])}")
            self.record_fields(inner, schema, "value")
        fn.line(f"{name}(append, {x})")

    def record_fields(self, fn: Function, schema: Any, record: str) -> None:
        """The fields in schema order; a missing field takes its default as fastavro's does."""
        # fastavro's union validation turns down a dict whose "-type" names another record.
        fn.line(f'if type({record}) is not dict or "-type" in {record}: raise Unusual')
        for field in schema["fields"]:
            x = fn.fresh("field")
            name = field["name"]
            fn.line(f"# {_comment(name)}: {_comment(describe(field['type']))}")
            if "default" in field and field["default"] is not None:
                fn.line(f"{x} = {record}.get({name!r}, {fn.const(field['default'], 'default')})")
            elif "default" in field or "null" in field["type"]:
                fn.line(f"{x} = {record}.get({name!r})")
            else:
                fn.line(f"{x} = {record}[{name!r}]")
            self.value(fn, field["type"], x)

    @staticmethod
    def _type_name(fn: Function, pytype: type) -> str:
        if pytype.__module__ == "builtins":
            return pytype.__name__
        return fn.const(pytype, "type")

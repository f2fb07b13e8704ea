"""Writes the source of one (writer, reader) schema pair's decoder: straight-line code per
writer field, reading from ``buf`` (bytes) at ``pos``.

Schema resolution is decided here, once: reader fields matched by name (and alias),
writer-only fields read and dropped, reader-only fields set to their defaults (after the
writer's fields, in reader order, as fastavro orders them), promotions, enum symbols and
union branches mapped. Whatever fastavro would refuse, and any byte sequence out of the
ordinary (a negative length, an unknown union branch, a boolean byte other than 0 or 1,
a truncated body), raises: the generated function then asks fastavro (``reference``), so
such input gets fastavro's value or fastavro's error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from common.avro_codegen import runtime
from common.avro_codegen.encoder import _comment
from common.avro_codegen.resolution import first_match, matches
from common.avro_codegen.schemas import NamedTypes, Unsupported, describe, kind_of, logical_key
from common.avro_codegen.source import Function, Module
from common import millis
from common.millis import SPAN_BITS, SPAN_MASK

RUNTIME_NAMES = {name: getattr(runtime, name) for name in (
    "Unusual", "ONE_BYTE_LONG", "ONE_BYTE_LENGTH", "BOOLEAN_OF_BYTE", "read_long", "read_length",
    "read_block_count", "unpack_float", "unpack_double", "timedelta")}
RUNTIME_NAMES.update({name: getattr(millis, name) for name in (
    "EPOCH_UTC", "SPAN_START", "MILLIS_IN_SPAN", "utc_from_millis")})
RUNTIME_NAMES["deepcopy"] = copy.deepcopy

# Each Avro type's smallest encoding is a byte or more, except these: a block count above
# the bytes left is corrupt only for items of a type not in here.
ZERO_WIDTH = frozenset({"null", "record"})

# Logical types converted inline: the values fastavro's readers give, computed faster
# (timestamp-millis: common.millis.utc_from_millis with its cache hit inlined; positional
# arguments). tests/unit/common/test_avro_codegen.py holds them equal.
INLINE_LOGICAL = {
    "long-timestamp-millis": f"{{x}}_start + MILLIS_IN_SPAN[{{x}} & {SPAN_MASK}] if ({{x}}_start := "
                             f"SPAN_START.get({{x}} >> {SPAN_BITS})) is not None else utc_from_millis({{x}})",
    "long-timestamp-micros": "EPOCH_UTC + timedelta(0, 0, {x})",
}


class DecoderGenerator:
    def __init__(self, writer: Any, reader: Any | None, logical_readers: dict[str, Callable[..., Any]]) -> None:
        self.writer = writer
        self.reader = reader
        self.writer_names = NamedTypes(writer)
        self.reader_names = NamedTypes(reader) if reader is not None else self.writer_names
        self.logical_readers = logical_readers
        title = describe(writer) if reader is None else f"{describe(writer)} read as {describe(reader)}"
        self.module = Module(f"Avro decoder of {_comment(title)}", RUNTIME_NAMES)
        self._record_functions: dict[tuple[str, str | None], str] = {}

    def generate(self) -> Module:
        fn = self.module.function("def decode(buf, start):")
        fn.line('"""The value encoded in buf from start on (fastavro\'s, for anything unusual)."""')
        with fn.block("try:"):
            fn.line("pos = start")
            writer = self.writer_names.resolve(self.writer)
            reader = self.reader_names.resolve(self.reader) if self.reader is not None else None
            if kind_of(writer) == "record" and (reader is None or self._same_record(writer, reader)):
                self.record_fields(fn, writer, reader, "result")
            else:
                self.read(fn, self.writer, self.reader, "result")
            fn.line("if pos > len(buf): raise Unusual  # a string or bytes ran past the end")
            fn.line("return result")
        with fn.block("except Exception:"):
            fn.line("return reference(buf, start)")
        return self.module

    def _same_record(self, writer: Any, reader: Any) -> bool:
        return matches(writer, reader, self.writer_names.resolve, self.reader_names.resolve) is True \
            and kind_of(reader) == "record"

    # ------------------------------------------------------------------ values
    def read(self, fn: Function, writer: Any, reader: Any | None, x: str) -> None:
        """Read a value written as ``writer`` into the local ``x``, as ``reader`` (None: as written)."""
        writer = self.writer_names.resolve(writer)
        kind = kind_of(writer)
        if reader is not None and kind != "union":
            reader = self._reader_for(writer, reader)
            if reader is None:
                fn.line("raise Unusual  # fastavro cannot read this as the reader's type")
                return
        getattr(self, f"read_{kind}")(fn, writer, reader, x)
        if kind == "union":
            return
        key = logical_key(writer)
        if key in INLINE_LOGICAL and key in self.logical_readers:
            fn.line(f"{x} = {INLINE_LOGICAL[key].format(x=x)}  # {key}")
        elif key in self.logical_readers:
            convert = fn.const(self.logical_readers[key], "convert")
            fn.line(f"{x} = {convert}({x}, {fn.const(writer, 'schema')}, {fn.const(reader, 'schema')})")
        elif reader is not None:
            self._promote(fn, kind, kind_of(reader), x)

    def _reader_for(self, writer: Any, reader: Any) -> Any | None:
        """The reader schema a (non-union) writer type is read as; None when fastavro fails."""
        reader = self.reader_names.resolve(reader)
        if isinstance(reader, list):
            index = first_match(writer, reader, self.writer_names.resolve, self.reader_names.resolve)
            return None if index is None else self.reader_names.resolve(reader[index])
        found = matches(writer, reader, self.writer_names.resolve, self.reader_names.resolve)
        return reader if found else None

    @staticmethod
    def _promote(fn: Function, writer_kind: str, reader_kind: str, x: str) -> None:
        if writer_kind in ("int", "long") and reader_kind in ("float", "double"):
            fn.line(f"{x} = float({x})")
        elif writer_kind == "string" and reader_kind == "bytes":
            fn.line(f"{x} = {x}.encode()")
        elif writer_kind == "bytes" and reader_kind == "string":
            fn.line(f"{x} = {x}.decode()")

    def read_null(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        fn.line(f"{x} = None")

    def read_boolean(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        fn.line(f"{x} = BOOLEAN_OF_BYTE[buf[pos]]")
        fn.line("pos += 1")

    def read_int(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        byte = fn.fresh("byte")
        fn.line(f"{byte} = buf[pos]")
        with fn.block(f"if {byte} < 0x80:"):
            fn.line(f"{x} = ONE_BYTE_LONG[{byte}]")
            fn.line("pos += 1")
        with fn.block("else:"):
            fn.line(f"{x}, pos = read_long(buf, pos)")

    read_long = read_int

    def read_float(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        fn.line(f"{x} = unpack_float(buf, pos)[0]")
        fn.line("pos += 4")

    def read_double(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        fn.line(f"{x} = unpack_double(buf, pos)[0]")
        fn.line("pos += 8")

    def _length(self, fn: Function, n: str, read: str = "read_length") -> None:
        fn.line(f"{n} = ONE_BYTE_LENGTH[buf[pos]]")
        with fn.block(f"if {n} < 0:"):
            fn.line(f"{n}, pos = {read}(buf, pos)")
        with fn.block("else:"):
            fn.line("pos += 1")

    def read_string(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        n = fn.fresh("n")
        self._length(fn, n)
        fn.line(f"{x} = buf[pos:pos + {n}].decode()")
        fn.line(f"pos += {n}")

    def read_bytes(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        n = fn.fresh("n")
        self._length(fn, n)
        fn.line(f"{x} = buf[pos:pos + {n}]")
        fn.line(f"pos += {n}")

    def read_fixed(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        size = int(writer["size"])
        fn.line(f"{x} = buf[pos:pos + {size}]")
        fn.line(f"pos += {size}")

    def read_enum(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        # The symbol by the byte of its index (indexes up to 63 are one byte; a later one
        # raises KeyError), already mapped to the reader's symbols.
        symbols = writer["symbols"]
        table = {}
        for index, symbol in enumerate(symbols[:64]):
            if reader is not None and symbol not in reader["symbols"]:
                if not reader.get("default"):
                    continue  # fastavro fails on this symbol
                symbol = reader["default"]
            table[index << 1] = symbol
        fn.line(f"{x} = {fn.const(table, 'symbols')}[buf[pos]]")
        fn.line("pos += 1")

    def read_array(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        item = fn.fresh("item")
        fn.line(f"{x} = []")
        with self._blocks(fn, writer["items"]):
            self.read(fn, writer["items"], reader["items"] if reader is not None else None, item)
            fn.line(f"{x}.append({item})")

    def read_map(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        key, item = fn.fresh("key"), fn.fresh("item")
        fn.line(f"{x} = {{}}")
        with self._blocks(fn, "string"):
            self.read_string(fn, "string", None, key)
            self.read(fn, writer["values"], reader["values"] if reader is not None else None, item)
            fn.line(f"{x}[{key}] = {item}")

    @contextmanager
    def _blocks(self, fn: Function, first_schema: Any) -> Iterator[None]:
        """The loop over an array's or a map's blocks and their items, up to the empty block."""
        count = fn.fresh("count")
        with fn.block("if buf[pos]:"):
            with fn.block("while True:"):
                self._length(fn, count, "read_block_count")
                with fn.block(f"if not {count}:"):
                    fn.line("break")
                if kind_of(self.writer_names.resolve(first_schema)) not in ZERO_WIDTH:
                    fn.line(f"if {count} > len(buf) - pos: raise Unusual  # more items than bytes left")
                with fn.block(f"for _ in range({count}):"):
                    yield
        with fn.block("else:"):
            fn.line("pos += 1  # no items: the empty block alone")

    def read_union(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        if len(writer) > 64:
            raise Unsupported("union with more than 64 branches")
        tag = fn.fresh("tag")
        fn.line(f"{tag} = buf[pos]")
        fn.line("pos += 1")
        for index, branch in enumerate(writer):
            keyword = "if" if index == 0 else "elif"
            with fn.block(f"{keyword} {tag} == {index << 1}:  # {_comment(describe(branch))}"):
                self.read(fn, branch, reader, x)  # a reader union: as its first matching branch
        with fn.block("else:"):
            fn.line("raise Unusual")

    def read_record(self, fn: Function, writer: Any, reader: Any, x: str) -> None:
        key = (writer["name"], reader["name"] if reader is not None else None)
        name = self._record_functions.get(key)
        if name is None:
            name = self._record_functions[key] = self.module.fresh("read_record_")
            inner = self.module.function(f"def {name}(buf, pos):")
            inner.line(f"# {_comment(describe(writer))}")
            self.record_fields(inner, writer, reader, "record")
            inner.line("return record, pos")
        fn.line(f"{x}, pos = {name}(buf, pos)")

    def record_fields(self, fn: Function, writer: Any, reader: Any | None, x: str) -> None:
        """Read the writer's fields in order and build the record dict into ``x``."""
        assigned: list[tuple[str, str]] = []  # (reader field name, expression), in fastavro's order
        unread = {field["name"]: field for field in reader["fields"]} if reader is not None else {}
        aliases = {alias: field for field in reader["fields"] for alias in field.get("aliases", [])} \
            if reader is not None else {}
        for field in writer["fields"]:
            local = fn.fresh("field")
            fn.line(f"# {_comment(field['name'])}: {_comment(describe(field['type']))}")
            if reader is None:
                self.read(fn, field["type"], None, local)
                assigned.append((field["name"], local))
                continue
            target = unread.get(field["name"], aliases.get(field["name"]))
            if target is None:
                self.read(fn, field["type"], None, local)  # not in the reader: read and dropped
                continue
            if target["name"] not in unread:
                raise Unsupported("two writer fields for one reader field")
            del unread[target["name"]]
            self.read(fn, field["type"], target["type"], local)
            assigned.append((target["name"], local))
        for name, field in unread.items():
            if "default" not in field:
                fn.line("raise Unusual  # a reader field without default the writer does not have")
                return
            assigned.append((name, self._default(fn, field["default"])))
        fn.line(f"{x} = {{" + ", ".join(f"{name!r}: {value}" for name, value in assigned) + "}")

    @staticmethod
    def _default(fn: Function, value: Any) -> str:
        """A reader default as fastavro gives it (the JSON value as is), a fresh copy when mutable."""
        if isinstance(value, (dict, list)):
            return "{}" if value == {} else "[]" if value == [] else f"deepcopy({fn.const(value, 'default')})"
        return fn.const(value, "default")

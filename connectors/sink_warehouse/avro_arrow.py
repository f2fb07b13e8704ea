"""Many Avro values of one writer schema → one Arrow table, decoded in native code.

Decoding one record at a time with fastavro builds a Python object per field and
costs ~25-35 µs per lab result here: more than everything else the sink does. Values
written with the same schema can instead be laid end to end in an Avro object
container file (the spec's header, then per value a block of ``count`` 1, ``size``,
the value and the sync marker: no re-encoding). DuckDB's ``avro`` extension reads such files column by
column into Arrow, several files at once on several threads (it releases the GIL).

The framing in front of every body (single-object or Confluent header) is not cut
off value by value: the container's schema is the writer schema with one leading
``fixed`` field as wide as the framing, and that column is dropped when reading.

The result is cast to the sink's own Avro→Arrow mapping (``arrow_schema.avro_to_arrow``),
so files are the same whichever way values were decoded. Only types whose DuckDB
reading casts *exactly* to the mapping are decoded here (:func:`_fits`); anything
else, and any batch DuckDB rejects, raises :class:`BulkDecodeUnavailable` and the
caller decodes record by record instead (which is also how a corrupt record is found).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.compute as pc

_SYNC_SIZE = 16
_FRAME_FIELD = "__labconnect_frame"
_MIN_PART = 4096  # values per file below which another thread is not worth starting
_DIR_PREFIX = "labconnect-avro-"


class BulkDecodeUnavailable(Exception):
    """This schema or this batch cannot be decoded in bulk: decode record by record."""


def _zigzag_varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def plain_schema(node: Any, seen: set[str] | None = None) -> Any:
    """A schema without fastavro's parse markers and with every named type defined once
    (``parse_schema(expand=True)`` output repeats definitions, which a writer rejects)."""
    seen = set() if seen is None else seen
    if isinstance(node, list):
        return [plain_schema(n, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") in ("record", "error", "enum", "fixed") and "name" in node:
        name = str(node["name"])
        full = name if "." in name or not node.get("namespace") else f"{node['namespace']}.{name}"
        if full in seen:
            return full
        seen.add(full)
    return {k: plain_schema(v, seen) for k, v in node.items()
            if not k.startswith("__fastavro") and k != "__named_schemas"}


def container_header(writer_schema: dict[str, Any], frame: int = 0) -> bytes:
    """The header of an uncompressed object container file (magic, metadata with the
    schema, sync marker: the last 16 bytes) whose records are ``frame`` bytes of framing
    followed by a body written with ``writer_schema``."""
    schema = plain_schema(writer_schema)
    if frame:
        fixed = {"type": "fixed", "name": "LabconnectFrame" + str(frame), "size": frame}
        schema = {**schema, "fields": [{"name": _FRAME_FIELD, "type": fixed}, *schema["fields"]]}
    out = io.BytesIO()
    fastavro.writer(out, json.loads(json.dumps(schema)), [], codec="null")
    return out.getvalue()


_ONE = _zigzag_varint(1)
_SIZES = [_zigzag_varint(n) for n in range(1 << 14)]  # the varints of every size up to 16 KiB


def container_file(header: bytes, values: Sequence[bytes]) -> bytes:
    """One object container file holding each of ``values`` in a block of its own.

    One block per value bounds every read by the value's own length, exactly like
    decoding values one by one: a truncated value fails instead of shifting its
    neighbours, and bytes after a body are ignored (as fastavro ignores them)."""
    sync = header[-_SYNC_SIZE:]
    sizes = _SIZES
    parts = [header]
    for value in values:
        size = len(value)
        parts += (_ONE, sizes[size] if size < 16384 else _zigzag_varint(size), value, sync)
    return b"".join(parts)


class AvroBatchDecoder:
    """Decodes batches through DuckDB's avro extension; one per task (not thread-safe)."""

    def __init__(self, workers: int | None = None) -> None:
        import duckdb

        self._workers = max(1, min(4, workers or os.cpu_count() or 1))
        _remove_orphans()
        # The files hold patients' values: a private directory, each file deleted once read,
        # and the directory named after this process so a later start removes it after a kill.
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        try:
            self._con = duckdb.connect(config={"threads": 1})  # parallel by files, one per worker thread
            # DuckDB caches file contents by path, size and a whole-second mtime: a file rewritten
            # within the same second would be read as its previous contents.
            self._con.execute("SET GLOBAL enable_external_file_cache = false")
            self._con.execute(f"LOAD '{_extension_path(duckdb.__version__)}'")
            self._cursors = [self._con.cursor() for _ in range(self._workers)]
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="avro-decode") if self._workers > 1 else None
        self._headers: dict[tuple[str, int], bytes] = {}
        self._unfit: set[str] = set()  # schema refs whose DuckDB types do not cast exactly
        self._calls = itertools.count()

    def decode(self, schema_ref: str, writer_schema: dict[str, Any], values: Sequence[bytes], frame: int,
               target: pa.Schema) -> pa.Table:
        """The rows of ``values`` (``frame`` bytes of framing, then the Avro body) with
        ``target``'s columns and types."""
        if schema_ref in self._unfit:
            raise BulkDecodeUnavailable(f"schema {schema_ref} has types decoded record by record")
        header = self._headers.get((schema_ref, frame))
        if header is None:
            if not _bulk_safe(writer_schema):
                self._unfit.add(schema_ref)
                raise BulkDecodeUnavailable(f"schema {schema_ref} has types decoded record by record")
            try:
                header = self._headers[(schema_ref, frame)] = container_header(writer_schema, frame)
            except Exception as exc:  # a schema fastavro cannot write a file header for
                self._unfit.add(schema_ref)
                raise BulkDecodeUnavailable(f"schema {schema_ref}: {type(exc).__name__}") from None
        table = self._read_all(header, _split(values, self._workers), frame)
        # A corrupt value makes DuckDB stop early (fewer rows) or raise: that batch is decoded
        # one by one, but the schema stays eligible for the next batch.
        if table.num_rows != len(values):
            raise BulkDecodeUnavailable("bulk decode stopped early: a corrupt value")
        if not _fits(table.schema, target):
            self._unfit.add(schema_ref)
            raise BulkDecodeUnavailable(f"schema {schema_ref} has types decoded record by record")
        try:
            decoded = table.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            self._unfit.add(schema_ref)
            raise BulkDecodeUnavailable(f"schema {schema_ref} has types decoded record by record") from None
        if not _in_fastavro_range(decoded):
            raise BulkDecodeUnavailable("a date or time outside what one-by-one decoding accepts")
        return decoded

    def _read_all(self, header: bytes, parts: list[Sequence[bytes]], frame: int) -> pa.Table:
        call = next(self._calls)
        if self._pool is None or len(parts) == 1:
            futures = []
            try:
                tables = [self._read(f"{call}-0", 0, header, parts[0], frame)]
            except Exception as exc:  # duckdb.Error: a corrupt value somewhere in the batch
                raise BulkDecodeUnavailable(f"bulk decode failed: {type(exc).__name__}") from None
        else:
            futures = [self._pool.submit(self._read, f"{call}-{i}", i, header, part, frame)
                       for i, part in enumerate(parts)]
            wait(futures)  # every part finished (and its file deleted) before anything is raised
            try:
                tables = [f.result() for f in futures]
            except Exception as exc:
                raise BulkDecodeUnavailable(f"bulk decode failed: {type(exc).__name__}") from None
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _read(self, name: str, worker: int, header: bytes, values: Sequence[bytes], frame: int) -> pa.Table:
        path = self._dir / f"{name}.avro"
        try:
            path.write_bytes(container_file(header, values))
            columns = f"* EXCLUDE ({_FRAME_FIELD})" if frame else "*"
            return self._cursors[worker].execute(f"SELECT {columns} FROM read_avro(?)", [str(path)]).to_arrow_table()
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for cursor in self._cursors:
            cursor.close()
        self._con.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _remove_orphans() -> None:
    """Remove the directories of decoders whose process is gone (killed before close()),
    and unnamed ones (no process id: an older version's) after an hour."""
    for directory in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        pid, _, rest = directory.name[len(_DIR_PREFIX):].partition("-")
        if rest and pid.isdigit():
            orphaned = int(pid) != os.getpid() and not _alive(int(pid))
        else:
            orphaned = _age_seconds(directory) > 3600
        if orphaned:
            shutil.rmtree(directory, ignore_errors=True)


def _age_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# fastavro rejects what datetime cannot hold (years 1..9999) and times of day outside 0..24 h,
# where DuckDB accepts or wraps them: such a batch is decoded one by one, so that every
# value is kept or dead-lettered the same way whichever path decodes it.
_EPOCH_DAYS = (-719_162, 2_932_896)
_EPOCH_MS = (-62_135_596_800_000, 253_402_300_799_999)
_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("date", "day"): _EPOCH_DAYS,
    ("timestamp", "ms"): _EPOCH_MS,
    ("timestamp", "us"): (_EPOCH_MS[0] * 1000, _EPOCH_MS[1] * 1000 + 999),
    ("time", "ms"): (0, 86_400_000 - 1),
    ("time", "us"): (0, 86_400_000_000 - 1),
}


def _in_fastavro_range(table: pa.Table) -> bool:
    for column, field in zip(table.columns, table.schema):
        kind = _temporal_kind(field.type)
        if kind is None or column.null_count == len(column):
            continue
        low, high = _RANGES[kind]
        bounds = pc.min_max(column.cast(pa.int32() if kind[0] == "date" or field.type == pa.time32("ms")
                                        else pa.int64()))
        if bounds["min"].as_py() < low or bounds["max"].as_py() > high:
            return False
    return True


def _temporal_kind(arrow_type: pa.DataType) -> tuple[str, str] | None:
    if pa.types.is_date32(arrow_type):
        return ("date", "day")
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit in ("ms", "us"):
        return ("timestamp", arrow_type.unit)
    if pa.types.is_time(arrow_type) and arrow_type.unit in ("ms", "us"):
        return ("time", arrow_type.unit)
    return None


def _bulk_safe(writer_schema: Any) -> bool:
    """Whether the schema decodes identically in bulk: no ``uuid`` (fastavro normalises and
    validates it, DuckDB keeps the text) and dates and times only in top-level fields, where
    their range is checked (:func:`_in_fastavro_range`)."""
    fields = writer_schema.get("fields", []) if isinstance(writer_schema, dict) else []
    return all(_node_safe(f.get("type"), top_level=True) for f in fields)


def _node_safe(node: Any, top_level: bool) -> bool:
    if isinstance(node, list):
        return all(_node_safe(branch, top_level) for branch in node)
    if not isinstance(node, dict):
        return True
    logical = node.get("logicalType")
    if logical == "uuid":
        return False
    if logical in _TEMPORAL_LOGICAL_TYPES and not top_level:
        return False
    kind = node.get("type")
    if kind in ("record", "error"):
        return all(_node_safe(f.get("type"), top_level=False) for f in node.get("fields", []))
    if kind == "array":
        return _node_safe(node.get("items"), top_level=False)
    if kind == "map":
        return _node_safe(node.get("values"), top_level=False)
    if isinstance(kind, (dict, list)):
        return _node_safe(kind, top_level)
    return True


_TEMPORAL_LOGICAL_TYPES = frozenset({"date", "time-millis", "time-micros", "timestamp-millis", "timestamp-micros",
                                     "local-timestamp-millis", "local-timestamp-micros"})


def _split(values: Sequence[bytes], workers: int) -> list[Sequence[bytes]]:
    """Contiguous parts, one per worker, none smaller than _MIN_PART (order is kept)."""
    count = max(1, min(workers, len(values) // _MIN_PART))
    size = -(-len(values) // count)
    return [values[i:i + size] for i in range(0, len(values), size)] or [values]


def _extension_path(duckdb_version: str) -> Path:
    import duckdb_extension_avro

    path = Path(duckdb_extension_avro.__file__).parent / "extensions" / f"v{duckdb_version}" / "avro.duckdb_extension"
    if not path.exists():
        raise RuntimeError(f"duckdb-extension-avro has no build for duckdb {duckdb_version}: install matching versions")
    return path


def _fits(got: pa.Schema, target: pa.Schema) -> bool:
    """Whether every column DuckDB produced casts to the mapping's type without loss."""
    if got.names != target.names:
        return False
    return all(_type_fits(g.type, t.type) for g, t in zip(got, target))


def _type_fits(got: pa.DataType, want: pa.DataType) -> bool:
    if got.equals(want):
        return True
    if pa.types.is_dictionary(got):  # Avro enum → DuckDB ENUM → the mapping's string
        return pa.types.is_string(want) and pa.types.is_string(got.value_type)
    if pa.types.is_timestamp(got) and pa.types.is_timestamp(want):
        # DuckDB keeps instants as naive microseconds since the epoch (UTC): exact for ms and us.
        return got.tz is None and got.unit == "us" and want.unit in ("ms", "us")
    if pa.types.is_time(got) and pa.types.is_time(want):
        return got.unit == "us" and want.unit in ("ms", "us")
    if pa.types.is_map(got) and pa.types.is_map(want):
        return _type_fits(got.key_type, want.key_type) and _type_fits(got.item_type, want.item_type)
    if pa.types.is_list(got) and pa.types.is_list(want):
        return _type_fits(got.value_type, want.value_type)
    if pa.types.is_struct(got) and pa.types.is_struct(want):
        if [f.name for f in got] != [f.name for f in want]:
            return False
        return all(_type_fits(g.type, w.type) for g, w in zip(got, want))
    return False  # decimals DuckDB cannot hold, fixed, uuid, unions...: decode record by record

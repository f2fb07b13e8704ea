"""WarehouseSinkTask: buffer a round of records per writer, write one object each on flush.

A *writer* is (topic, Kafka partition, time partition). Within a round (the
records between two flushes) a writer produces one object named after the
offset of its first record, and a further object wherever the writer schema
changes. Both cut points depend only on the data and on where the round starts
(the committed offset), so a round replayed after a crash rewrites the same keys:
see README.md, "Exactly once".

A round's storage work (put + flush) happens while the runtime does not poll Kafka,
so it is bounded by ``WAREHOUSE_FLUSH_TIMEOUT_MS``: past it, the next object is not
started and the round is retried, before ``max.poll.interval.ms`` could drop the
task from the group (README, "S3").
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa

from common.config import WorkerSettings
from common.errors import ConfigError, ConnectorError, PermanentError, RetriableError
from common.records import SinkRecord
from common.task import SinkTask, SinkTaskContext, TopicPartition
from connectors.sink_warehouse.arrow_schema import SchemaMappingError, evolution_conflicts
from connectors.sink_warehouse.formats import FileFormat, make_format
from connectors.sink_warehouse.layout import InvalidEventTime, TimePartitioner, epoch_ms, object_key
from connectors.sink_warehouse.schema_manifest import SchemaManifest
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.storage import Storage, open_storage

log = logging.getLogger(__name__)

WriterKey = tuple[str, int, str]  # topic, Kafka partition, time partition

# What a bad value makes the encoders raise (fastavro's come as ValueError/TypeError/OverflowError,
# or as SchemaMappingError from AvroFormat.write). MemoryError and OSError are not the records' fault.
_ENCODING_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError)


@dataclass
class _Chunk:
    """The records of one future object: one writer, one writer schema, contiguous."""

    writer: WriterKey
    schema_ref: str
    start_offset: int
    records: list[SinkRecord] = field(default_factory=list)


class WarehouseSinkTask(SinkTask):
    def __init__(self, settings: WarehouseSettings, storage: Storage | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``storage`` replaces the one built from ``settings.warehouse_url``, ``clock``
        the one the flush deadline is measured with (tests)."""
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.format: FileFormat = make_format(
            settings.warehouse_format, compression=settings.parquet_compression,
            row_group_size=settings.parquet_row_group_size, include_headers=settings.warehouse_include_headers,
        )
        self.partitioner = TimePartitioner(settings.warehouse_timezone)
        self._prepared: dict[str, Any] = {}  # schema ref -> the format's per-schema state
        self._accepted: set[tuple[str, str]] = set()  # (topic, schema ref) checked for evolution
        # (topic, schema ref) -> why it conflicts with the topic's files (known types only ever grow)
        self._conflicts: dict[tuple[str, str], str] = {}
        self._columns: dict[str, dict[str, pa.DataType]] = {}  # topic -> column types of its files
        self._open: dict[WriterKey, _Chunk] = {}
        self._chunks: list[_Chunk] = []
        self._round_started: float | None = None  # clock() at the round's first put

    def start(self, context: SinkTaskContext) -> None:
        super().start(context)
        s = self.settings
        poll_interval_ms = int(s.kafka_properties().get("max.poll.interval.ms", 300_000))
        if s.round_time_bound_ms >= poll_interval_ms:
            raise ConfigError([
                f"WAREHOUSE_FLUSH_TIMEOUT_MS plus one S3 request's longest time ({s.round_time_bound_ms} ms) must "
                f"stay below KAFKA_MAX_POLL_INTERVAL_MS ({poll_interval_ms} ms)"])
        if self.storage is None:
            self.storage = open_storage(
                s.warehouse_url, endpoint_url=s.s3_endpoint_url, region=s.s3_region,
                max_attempts=s.s3_max_attempts, connect_timeout=s.s3_connect_timeout_ms / 1000,
                read_timeout=s.s3_read_timeout_ms / 1000, part_size=s.s3_part_size_bytes,
                sse=s.s3_sse, sse_kms_key_id=s.s3_sse_kms_key_id,
            )
        self.manifest = SchemaManifest(self.storage)

    def put(self, records: Sequence[SinkRecord]) -> None:
        if self._round_started is None:
            self._round_started = self.clock()
        time_field = self.settings.warehouse_timestamp_field
        partition_of = self.partitioner.partition
        open_chunks = self._open
        for record in records:
            value = record.value
            if value is None:
                continue  # a tombstone carries no event to archive
            try:
                time_partition = partition_of(epoch_ms(value.get(time_field)))
            except InvalidEventTime as exc:
                raise PermanentError(f"{_where(record)}: time field {time_field} is {exc}") from None
            writer = (record.topic, record.partition, time_partition)
            chunk = open_chunks.get(writer)
            ref = record.schema or ""
            if chunk is None or chunk.schema_ref != ref:
                # A schema change cuts the object: the cut point is in the data, so replays repeat it.
                self._accept(record, ref)
                chunk = open_chunks[writer] = _Chunk(writer, ref, record.offset)
                self._chunks.append(chunk)
            chunk.records.append(record)

    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        """Write every buffered chunk; on failure keep them, so a retry rewrites the same keys."""
        if not self._chunks:
            self._round_started = None
            return
        assert self.storage is not None, "start() was not called"
        self.manifest.store(before_each=self._check_deadline)  # schemas before the data that uses them
        objects = rows = 0
        for chunk in self._chunks:
            topic, partition, time_partition = chunk.writer
            key = object_key(self.storage.prefix, topic, partition, time_partition,
                             chunk.start_offset, self.format.extension)
            self._check_deadline(key)
            with self.storage.open_object(key) as out, _gc_paused():
                try:
                    self.format.write(out, self._prepared[chunk.schema_ref], chunk.records)
                except (ConnectorError, MemoryError, OSError):
                    # Not the records' fault; the storage turns an OSError of its file (disk full)
                    # into a RetriableError. (ArrowMemoryError is an ArrowException too.)
                    raise
                except _ENCODING_ERRORS as exc:  # pyarrow/fastavro may echo values: keep only the class
                    raise PermanentError(f"cannot encode {key}: {type(exc).__name__}") from None
            objects += 1
            rows += len(chunk.records)
            log.debug("wrote %s (%d rows)", key, len(chunk.records))
        log.info("flushed %d objects, %d rows", objects, rows)
        self.abort()

    def abort(self) -> None:
        self._open.clear()
        self._chunks.clear()
        self._round_started = None

    def close(self, partitions: Sequence[TopicPartition]) -> None:
        revoked = set(partitions)
        self._chunks = [c for c in self._chunks if (c.writer[0], c.writer[1]) not in revoked]
        self._open = {w: c for w, c in self._open.items() if (w[0], w[1]) not in revoked}

    def stop(self) -> None:
        if self.storage is not None:
            self.storage.close()

    def _accept(self, record: SinkRecord, ref: str) -> None:
        """Map the record's writer schema (cached per ref) and check it against the
        columns earlier files of the topic have, before the record is buffered."""
        if (record.topic, ref) in self._accepted:
            return
        try:
            if (record.topic, ref) in self._conflicts:  # no storage request per rejected record
                raise SchemaMappingError(self._conflicts[(record.topic, ref)])
            prepared = self._prepared.get(ref)
            if prepared is None:
                if not ref:
                    raise SchemaMappingError("record has no writer schema")
                prepared = self._prepared[ref] = self.format.prepare(self.context.writer_schema(ref))
            schema = self.format.arrow_schema(prepared)
            if schema is not None:
                # Other processes (before a restart or rebalance, other tasks) may have written
                # files of this topic with schemas this one never saw: check against those too.
                known = self._columns.setdefault(record.topic, {})
                self._check_deadline(f"reading the schemas of {record.topic}")
                for stored in self.manifest.new_schemas(record.topic):
                    _merge_columns(known, stored)
                conflicts = evolution_conflicts(known, schema)
                if conflicts:
                    reason = self._conflicts[(record.topic, ref)] = (
                        f"incompatible type change of columns {conflicts} (schema {ref})")
                    raise SchemaMappingError(reason)
                _merge_columns(known, schema)
                self.manifest.add(record.topic, schema)
        except PermanentError as exc:
            raise PermanentError(f"{_where(record)}: {exc}") from None
        self._accepted.add((record.topic, ref))

    def _check_deadline(self, next_step: str) -> None:
        """Before each storage request: past WAREHOUSE_FLUSH_TIMEOUT_MS, give the round back to
        the runtime (which polls Kafka while it waits, then delivers the same records again)."""
        started = self._round_started
        elapsed_ms = 0.0 if started is None else (self.clock() - started) * 1000
        limit_ms = self.settings.warehouse_flush_timeout_ms
        if elapsed_ms > limit_ms:
            raise RetriableError(f"round ran {elapsed_ms:.0f} ms, over WAREHOUSE_FLUSH_TIMEOUT_MS "
                                 f"({limit_ms} ms), before {next_step}")


def _merge_columns(known: dict[str, pa.DataType], schema: pa.Schema) -> None:
    for f in schema:
        if f.name not in known or not pa.types.is_null(f.type):
            known[f.name] = f.type


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Encoding allocates ~one tuple per row and one object per cell, all acyclic.
    With a round of decoded records alive, that triggers collections that walk every
    record again and again: pausing the cyclic GC while encoding doubles throughput."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _where(record: SinkRecord) -> str:
    """Identifies a record without its contents (no PHI in messages)."""
    return f"{record.topic}/{record.partition}@{record.offset}"


def make_task(settings: WorkerSettings) -> WarehouseSinkTask:
    return WarehouseSinkTask(cast(WarehouseSettings, settings))

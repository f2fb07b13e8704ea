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
import logging
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa

from common import (
    ConfigError, ConnectorError, PermanentError, RetriableError, SinkRecord, SinkTask, SinkTaskContext, TopicPartition,
    WorkerSettings,
)
from common.heap import gc_paused
from common.serde import SerializationError, avro_body_offset
from connectors.sink_warehouse.arrow_schema import (
    ColumnTypes, SchemaMappingError, add_column_types, evolution_conflicts)
from connectors.sink_warehouse.avro_arrow import AvroBatchDecoder, BulkDecodeUnavailable
from connectors.sink_warehouse.columns import RowLayout
from connectors.sink_warehouse.formats import FileFormat, ParquetFormat, make_format
from connectors.sink_warehouse.layout import InvalidEventTime, TimePartitioner, epoch_ms, object_key
from connectors.sink_warehouse.schema_manifest import SchemaManifest
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.storage import SkipUnchanged, Storage, open_storage

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
    pieces: list[pa.Table] = field(default_factory=list)  # value columns, when decoded in bulk

    def values(self) -> pa.Table | None:
        return pa.concat_tables(self.pieces) if self.pieces else None


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
        # Parquet is written from Arrow columns: values are decoded in bulk straight into them.
        self.raw_values = isinstance(self.format, ParquetFormat)
        self._bulk: AvroBatchDecoder | None = None
        self._prepared: dict[str, Any] = {}  # schema ref -> the format's per-schema state
        # (topic, schema ref) with files written (their types are in _columns), or needing no check
        self._accepted: set[tuple[str, str]] = set()
        # (topic, schema ref) -> row schema accepted in this round, not written yet (maybe never)
        self._round_schemas: dict[tuple[str, str], pa.Schema] = {}
        # (topic, schema ref) -> why it conflicts with the topic's files (known types only ever grow)
        self._conflicts: dict[tuple[str, str], str] = {}
        self._columns: dict[str, ColumnTypes] = {}  # topic -> every type each column of its files has
        self._manifest_keys: dict[tuple[str, str], str] = {}  # (topic, schema ref) -> schema manifest key
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
        # A retried round skips the objects its failed attempt uploaded with the same bytes,
        # so a round too long for one WAREHOUSE_FLUSH_TIMEOUT_MS still finishes.
        self.uploads = SkipUnchanged(self.storage)
        self.manifest = SchemaManifest(self.storage)
        if self.raw_values:
            try:
                self._bulk = AvroBatchDecoder()
            except Exception as exc:  # e.g. duckdb and duckdb-extension-avro versions differ
                log.warning("bulk Avro decoding unavailable (%s); decoding record by record", exc)

    def put(self, records: Sequence[SinkRecord]) -> None:
        if self._round_started is None:
            self._round_started = self.clock()
        if self.raw_values:
            for run in _runs(records):
                self._put_run(run)
            return
        self._put_decoded(records)

    def _put_run(self, run: Sequence[SinkRecord]) -> None:
        """Buffer a run of raw records of one topic-partition and one writer schema."""
        first = run[0]
        ref = first.schema or ""
        newly_accepted = (first.topic, ref) not in self._round_schemas
        self._accept(first, ref)
        run, values = self._decode_run(run, ref)
        if not run:  # every record was dead-lettered: the schema has no data in this round
            if newly_accepted:
                self._round_schemas.pop((first.topic, ref), None)
            return
        topic, partition = first.topic, first.partition
        for time_partition, rows in self._rows_by_time_partition(run, values).items():
            chunk = self._chunk((topic, partition, time_partition), ref, run[rows[0] if rows else 0].offset)
            if rows is None:
                chunk.records.extend(run)
                chunk.pieces.append(values)
            else:
                chunk.records.extend(run[i] for i in rows)
                chunk.pieces.append(values.take(pa.array(rows, pa.int64())))

    def _decode_run(self, run: Sequence[SinkRecord], ref: str) -> tuple[Sequence[SinkRecord], pa.Table]:
        """The run's records that decode, and their value columns."""
        layout = cast(RowLayout, self._prepared[ref])
        target = pa.schema(layout.value_fields)
        if self._bulk is not None and len(run) >= _MIN_BULK:
            raw_values = [cast(bytes, r.raw_value) for r in run]
            try:
                return run, self._bulk.decode(ref, self.context.writer_schema(ref), raw_values,
                                              avro_body_offset(ref), target)
            except BulkDecodeUnavailable as exc:
                log.debug("%s", exc)
        # Record by record: finds a corrupt value, and reads the types DuckDB does not read exactly.
        # A corrupt value goes to the dead-letter queue and the others are written: whether a
        # record is kept depends only on its bytes, so a replay cuts the same objects.
        kept = []
        for record in run:
            try:
                record.value = self.context.decode(cast(bytes, record.raw_value))
            except SerializationError as exc:
                self.context.report(record, SerializationError(f"{_where(record)}: {exc}"), "VALUE_CONVERTER")
                continue
            kept.append(record)
        return kept, pa.Table.from_arrays(layout.value_arrays(kept), schema=target)

    def _rows_by_time_partition(self, run: Sequence[SinkRecord], values: pa.Table) -> dict[str, list[int] | None]:
        """Row numbers per time partition, from the (bulk-decoded) time column; ``None``
        stands for every row (a run within one hour: the usual case, and no per-row work)."""
        field_name = self.settings.warehouse_timestamp_field
        if field_name not in values.column_names:
            raise PermanentError(f"{_where(run[0])}: time field {field_name} is missing")
        column = values[field_name]
        millis: list[Any]
        if column.null_count == 0 and pa.types.is_timestamp(column.type) and column.type.unit in ("ms", "us"):
            millis = column.cast(pa.int64()).to_pylist()
            if column.type.unit == "us":
                millis = [us // 1000 for us in millis]  # floor, as epoch_ms() does (not Arrow's truncation)
        elif column.null_count == 0 and pa.types.is_int64(column.type):
            millis = column.to_pylist()
        else:  # nulls or another type: per value, so the error names the record
            millis = [_event_ms(record, field_name, value) for record, value in zip(run, column.to_pylist())]
        partition_of = self.partitioner.partition
        with contextlib.suppress(InvalidEventTime):
            single = self.partitioner.uniform_partition(min(millis), max(millis))
            if single is not None:
                return {single: None}
        rows: dict[str, list[int] | None] = {}
        for i, (record, ms) in enumerate(zip(run, millis)):
            try:
                time_partition = partition_of(ms)
            except InvalidEventTime as exc:
                raise PermanentError(f"{_where(record)}: time field {field_name} is {exc}") from None
            cast(list[int], rows.setdefault(time_partition, [])).append(i)
        return rows

    def _put_decoded(self, records: Sequence[SinkRecord]) -> None:
        """Buffer records the runtime decoded (Avro and JSON Lines files)."""
        time_field = self.settings.warehouse_timestamp_field
        partition_of = self.partitioner.partition
        for record in records:
            value = record.value
            if value is None:
                continue  # a tombstone carries no event to archive
            try:
                time_partition = partition_of(epoch_ms(value.get(time_field)))
            except InvalidEventTime as exc:
                raise PermanentError(f"{_where(record)}: time field {time_field} is {exc}") from None
            ref = record.schema or ""
            self._accept(record, ref)
            self._chunk((record.topic, record.partition, time_partition), ref, record.offset).records.append(record)

    def _chunk(self, writer: WriterKey, ref: str, start_offset: int) -> _Chunk:
        """The writer's open chunk, or a new one from ``start_offset`` where there is none or the
        writer schema changed: the cut point is in the data, so replays repeat it."""
        chunk = self._open.get(writer)
        if chunk is None or chunk.schema_ref != ref:
            chunk = self._open[writer] = _Chunk(writer, ref, start_offset)
            self._chunks.append(chunk)
        return chunk

    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        """Write every buffered chunk; on failure keep them, so a retry rewrites the same keys."""
        if not self._chunks:
            self.abort()  # an empty round: nothing of it may carry over to the next
            return
        assert self.storage is not None, "start() was not called"
        objects = rows = 0
        skipped = self.uploads.skipped
        for chunk in self._chunks:
            topic, partition, time_partition = chunk.writer
            key = object_key(self.storage.prefix, topic, partition, time_partition,
                             chunk.start_offset, self.format.extension)
            self._check_deadline(key)
            # Encoding allocates ~one tuple per row and one object per cell, all acyclic.
            with self.uploads.open_object(key) as out, gc_paused():
                try:
                    self.format.write(out, self._prepared[chunk.schema_ref], chunk.records, chunk.values())
                except (ConnectorError, MemoryError, OSError):
                    # Not the records' fault; the storage turns an OSError of its file (disk full)
                    # into a RetriableError. (ArrowMemoryError is an ArrowException too.)
                    raise
                except _ENCODING_ERRORS as exc:  # pyarrow/fastavro may echo values: keep only the class
                    raise PermanentError(f"cannot encode {key}: {type(exc).__name__}") from None
                # The manifest gets the schema only with data that encoded (none for records bound
                # for the DLQ), and before that data is published.
                self._store_schema(chunk)
                self._check_deadline(key)  # encoding and the manifest took time: again before the upload
            objects += 1
            rows += len(chunk.records)
            log.debug("wrote %s (%d rows)", key, len(chunk.records))
        log.info("flushed %d objects (%d already uploaded by a failed attempt), %d rows",
                 objects, self.uploads.skipped - skipped, rows)
        self.uploads.forget()  # the round is done: the runtime commits it now
        self.abort()

    def open(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        # While this task did not own them, another may have rewritten keys it uploaded before
        # (a revoke or loss mid-retry calls abort(), not close()): skip nothing from memory.
        self.uploads.forget()
        return None

    def abort(self) -> None:
        self._open.clear()
        self._chunks.clear()
        self._round_schemas.clear()
        self._round_started = None

    def close(self, partitions: Sequence[TopicPartition]) -> None:
        revoked = set(partitions)
        self._chunks = [c for c in self._chunks if (c.writer[0], c.writer[1]) not in revoked]
        self._open = {w: c for w, c in self._open.items() if (w[0], w[1]) not in revoked}
        self.uploads.forget()  # the partitions' new owner may write their keys from now on

    def stop(self) -> None:
        if self._bulk is not None:
            self._bulk.close()
        if self.storage is not None:
            self.storage.close()

    def _accept(self, record: SinkRecord, ref: str) -> None:
        """Map the record's writer schema (cached per ref) and check it against the
        columns earlier files of the topic have, before the record is buffered."""
        key = (record.topic, ref)
        if key in self._accepted or key in self._round_schemas:
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
                self._check_evolution(record.topic, ref, schema)
        except PermanentError as exc:
            raise PermanentError(f"{_where(record)}: {exc}") from None
        if schema is None:
            self._accepted.add(key)
        else:
            self._round_schemas[key] = schema

    def _check_evolution(self, topic: str, ref: str, schema: pa.Schema) -> None:
        """Check ``schema`` against every type each column of the topic's files has. Other
        processes (before a restart or rebalance, other tasks) may have written files with
        schemas this one never saw, so the schema manifest is read first (its reads count
        against the round's deadline)."""
        known = self._columns.setdefault(topic, {})
        for stored in self.manifest.new_schemas(topic, before_each=self._check_deadline).values():
            add_column_types(known, stored)
        manifest_key = self._manifest_keys[(topic, ref)] = self.manifest.prepare(topic, schema)
        # A schema already in the manifest has files: rejecting it would protect no reader.
        if self.manifest.contains(topic, manifest_key):
            return
        conflicts = evolution_conflicts(known, schema)
        if conflicts:  # against files that exist: for good
            reason = self._conflicts[(topic, ref)] = (
                f"incompatible type change of columns {conflicts} (schema {ref})")
            raise SchemaMappingError(reason)
        # Against this round's other schemas too (their files would sit side by side), but not
        # remembered: a round that fails writes none of them.
        with_round: ColumnTypes = {name: list(types) for name, types in known.items()}
        for (other_topic, _), other in self._round_schemas.items():
            if other_topic == topic:
                add_column_types(with_round, other)
        conflicts = evolution_conflicts(with_round, schema)
        if conflicts:
            raise SchemaMappingError(f"incompatible type change of columns {conflicts} (schema {ref}) "
                                     "against another schema of this round")

    def _store_schema(self, chunk: _Chunk) -> None:
        """The chunk's data is encoded and about to be published: its schema now has a file."""
        key = (chunk.writer[0], chunk.schema_ref)
        manifest_key = self._manifest_keys.get(key)
        if manifest_key is not None:  # None: a format without a manifest
            self.manifest.store(manifest_key, before_each=self._check_deadline)
        schema = self._round_schemas.get(key)
        if schema is not None:
            add_column_types(self._columns.setdefault(key[0], {}), schema)
            self._accepted.add(key)

    def _check_deadline(self, next_step: str) -> None:
        """Before each storage request: past WAREHOUSE_FLUSH_TIMEOUT_MS, give the round back to
        the runtime (which polls Kafka while it waits, then delivers the same records again)."""
        started = self._round_started
        elapsed_ms = 0.0 if started is None else (self.clock() - started) * 1000
        limit_ms = self.settings.warehouse_flush_timeout_ms
        if elapsed_ms > limit_ms:
            raise RetriableError(f"round ran {elapsed_ms:.0f} ms, over WAREHOUSE_FLUSH_TIMEOUT_MS "
                                 f"({limit_ms} ms), before {next_step}")


_RUN_KEY = operator.attrgetter("topic", "partition", "schema")
_MIN_BULK = 64  # fewer values decode faster one by one than through a DuckDB query


def _runs(records: Sequence[SinkRecord]) -> Iterator[Sequence[SinkRecord]]:
    """The records of each topic-partition, in order, cut where the writer schema changes.

    Fetches of several partitions may interleave in a batch; each run is decoded in one
    go, so runs are gathered per partition. Tombstones carry no event to archive and are
    left out (their schema is None: they form runs of their own)."""
    keys = list(map(_RUN_KEY, records))
    cuts = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    segments: dict[tuple[str, int], list[list[SinkRecord]]] = {}
    start = 0
    for end in [*cuts, len(records)]:
        first = records[start] if end > start else None
        if first is not None and first.raw_value is not None:
            runs = segments.setdefault((first.topic, first.partition), [])
            if runs and runs[-1][-1].schema == first.schema:
                runs[-1].extend(records[start:end])
            else:
                runs.append(list(records[start:end]))
        start = end
    for runs in segments.values():
        yield from runs


def _event_ms(record: SinkRecord, field_name: str, value: object) -> int:
    try:
        return epoch_ms(value)
    except InvalidEventTime as exc:
        raise PermanentError(f"{_where(record)}: time field {field_name} is {exc}") from None


def _where(record: SinkRecord) -> str:
    """Identifies a record without its contents (no PHI in messages)."""
    return f"{record.topic}/{record.partition}@{record.offset}"


def make_task(settings: WorkerSettings) -> WarehouseSinkTask:
    return WarehouseSinkTask(cast(WarehouseSettings, settings))

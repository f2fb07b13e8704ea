"""The task against a local warehouse directory: keys, cuts and the exactly-once rewrite."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
import pytest

from common.errors import ConfigError, PermanentError, RetriableError
from warehouse_records import HOUR_MS, T0, FakeContext, RecordFactory, lab_result_schema, with_extra_field
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.storage import LocalStorage
from connectors.sink_warehouse import task as task_module
from connectors.sink_warehouse.layout import epoch_ms
from connectors.sink_warehouse.task import WarehouseSinkTask


@pytest.fixture(autouse=True, params=["bulk", "one-by-one"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with Parquet values decoded in bulk (DuckDB) and one by one (fastavro)."""
    monkeypatch.setattr(task_module, "_MIN_BULK", 1 if request.param == "bulk" else 10**9)
    return str(request.param)


def version_as_string() -> dict[str, Any]:
    """LabResult with ``version`` changed from int to string: an incompatible change."""
    changed = lab_result_schema()
    for field in changed["fields"]:
        if field["name"] == "version":
            field["type"], field["default"] = "string", "1"
    return changed


def start_task(root: Path, context: FakeContext, **settings: object) -> WarehouseSinkTask:
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{root}", **settings))
    task.start(context)
    return task


def files(root: Path) -> list[str]:
    """The data files (not the schema manifests under ``_schemas/``)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "_schemas" not in p.parts)


def manifests(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("topic=*/_schemas/*"))


def rows(root: Path) -> list[tuple[int, int]]:
    return duckdb.sql(
        f"select _kafka_partition, _kafka_offset from read_parquet('{root}/**/*.parquet', union_by_name=true) "
        "order by all").fetchall()


def test_one_object_per_writer_per_round_named_by_first_offset(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    # offsets 0..5 in hour 06, 6..9 in hour 07; a second partition in hour 06
    task.put(make_records(range(10), ts=lambda i: T0 + (HOUR_MS if i >= 6 else 0)))
    task.put(make_records(range(3), partition=1))
    task.flush({})
    assert files(tmp_path) == [
        "topic=lab-results/dt=2024-06-10/hour=06/lab-results+0+0000000000.parquet",
        "topic=lab-results/dt=2024-06-10/hour=06/lab-results+1+0000000000.parquet",
        "topic=lab-results/dt=2024-06-10/hour=07/lab-results+0+0000000006.parquet",
    ]
    assert len(rows(tmp_path)) == 13


def test_late_record_goes_back_to_its_hour_in_the_same_round(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.put(make_records(range(6), ts=lambda i: T0 + (HOUR_MS if i % 2 else 0)))
    task.flush({})
    assert [f.rsplit("/", 1)[1] for f in files(tmp_path)] == ["lab-results+0+0000000000.parquet",
                                                               "lab-results+0+0000000001.parquet"]


def test_schema_change_cuts_a_new_object_and_readers_union_by_name(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    evolved = with_extra_field(lab_result_schema(), "specimen")
    task.put(make_records(range(0, 4)))
    task.put(make_records(range(4, 8), schema=evolved, extra={"specimen": "blood"}))
    task.put(make_records(range(8, 10)))
    task.flush({})
    assert [f.rsplit("+", 1)[1] for f in files(tmp_path)] == ["0000000000.parquet", "0000000004.parquet",
                                                               "0000000008.parquet"]
    specimen = duckdb.sql(f"select _kafka_offset, specimen from read_parquet('{tmp_path}/**/*.parquet', "
                          "union_by_name=true) order by 1").fetchall()
    assert specimen == [(i, "blood" if 4 <= i < 8 else None) for i in range(10)]


def test_crash_between_upload_and_commit_leaves_no_duplicate_rows(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    spread = {"ts": lambda i: T0 + (i % 3) * HOUR_MS}  # three time partitions interleaved
    evolved = with_extra_field(lab_result_schema(), "specimen")
    committed = start_task(tmp_path, context)
    committed.put(make_records(range(0, 20), **spread))
    committed.flush({})  # offsets up to 20 committed
    crashed = start_task(tmp_path, context)
    crashed.put(make_records(range(20, 50), **spread))
    crashed.put(make_records(range(50, 60), schema=evolved, **spread))
    crashed.flush({})  # uploaded, then the process died before the commit
    # The restart consumes from 20 again but its rounds end elsewhere (35, then 60).
    restarted = start_task(tmp_path, context)
    restarted.put(make_records(range(20, 35), **spread))
    restarted.flush({})
    restarted.put(make_records(range(35, 50), **spread))
    restarted.put(make_records(range(50, 60), schema=evolved, **spread))
    restarted.flush({})
    assert rows(tmp_path) == [(0, i) for i in range(60)]


def test_failed_flush_is_retried_with_the_same_keys(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    class FailingOnce(LocalStorage):
        calls = 0

        def open_object(self, key: str):  # type: ignore[no-untyped-def]
            if key.endswith(".parquet"):  # not the schema manifest
                self.calls += 1
            if self.calls == 2:
                raise RetriableError("store unavailable")
            return super().open_object(key)

    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), FailingOnce(tmp_path))
    task.start(context)
    batch = make_records(range(10), ts=lambda i: T0 + (i % 2) * HOUR_MS)
    task.put(batch)
    with pytest.raises(RetriableError):
        task.flush({})
    assert len(files(tmp_path)) == 1
    task.abort()  # what the runtime does, before putting the same records again
    task.put(batch)
    task.flush({})
    assert len(files(tmp_path)) == 2 and rows(tmp_path) == [(0, i) for i in range(10)]


def test_abort_drops_the_buffered_round(tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.put(make_records(range(5)))
    task.abort()
    task.flush({})
    assert files(tmp_path) == []


def test_close_drops_only_revoked_partitions(tmp_path: Path, context: FakeContext,
                                             make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.put(make_records(range(3), partition=0) + make_records(range(3), partition=1))
    task.close([("lab-results", 1)])
    task.flush({})
    assert [f.rsplit("/", 1)[1] for f in files(tmp_path)] == ["lab-results+0+0000000000.parquet"]


@pytest.mark.parametrize("bad_time", [None, "yesterday"])
def test_bad_time_field_is_permanent_and_names_no_contents(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, bad_time: object) -> None:
    loose = lab_result_schema()  # a writer schema that lets the time field be anything
    for field in loose["fields"]:
        if field["name"] == "timestamp":
            field["type"] = ["null", "string"]
    bad = make_records([7], schema=loose, extra={"timestamp": bad_time})[0]
    task = start_task(tmp_path, context)
    with pytest.raises(PermanentError) as caught:
        task.put([bad])
    message = str(caught.value)
    assert "lab-results/0@7" in message and "timestamp" in message
    assert "P0" not in message and "evt-" not in message and "yesterday" not in message


def test_incompatible_type_change_is_permanent_and_earlier_schema_keeps_working(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.put(make_records(range(3)))
    changed = version_as_string()
    with pytest.raises(PermanentError, match="version"):
        task.put(make_records([3], extra={"version": "2"}, schema=changed))
    task.put(make_records(range(3, 6)))
    task.flush({})
    assert len(rows(tmp_path)) == 6


def test_unmappable_schema_is_permanent(tmp_path: Path, context: FakeContext,
                                        make_records: RecordFactory) -> None:
    schema = with_extra_field(lab_result_schema(), "either", ["null", "string", "long"])
    task = start_task(tmp_path, context)
    with pytest.raises(PermanentError, match="lab-results/0@0"):
        task.put(make_records([0], schema=schema))


def test_tombstones_are_skipped(tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    record = make_records([0])[0]
    tombstone = type(record)(**{**{s: getattr(record, s) for s in record.__slots__},
                                "value": None, "raw_value": None, "schema": None, "offset": 1})
    task = start_task(tmp_path, context)
    task.put([record, tombstone])
    task.flush({})
    assert rows(tmp_path) == [(0, 0)]


@pytest.mark.parametrize("fmt", ["avro", "jsonl"])
def test_other_formats_use_the_same_layout(tmp_path: Path, context: FakeContext,
                                           make_records: RecordFactory, fmt: str) -> None:
    task = start_task(tmp_path, context, warehouse_format=fmt)
    task.put(make_records(range(3)))
    task.flush({})
    assert files(tmp_path) == [f"topic=lab-results/dt=2024-06-10/hour=06/lab-results+0+0000000000.{fmt}"]


def test_timezone_setting_picks_the_local_hour(tmp_path: Path, context: FakeContext,
                                               make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context, warehouse_timezone="America/New_York")
    task.put(make_records([0]))
    task.flush({})
    assert files(tmp_path)[0].startswith("topic=lab-results/dt=2024-06-10/hour=02/")


# --- the schema check survives restarts and rebalances (schema manifests in storage) ---

def with_field_type(field_name: str, avro_type: Any, default: Any) -> dict[str, Any]:
    schema = lab_result_schema()
    for field in schema["fields"]:
        if field["name"] == field_name:
            field["type"], field["default"] = avro_type, default
    return schema


def test_incompatible_type_change_is_still_rejected_after_a_restart(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    metadata_as_string = with_field_type("metadata", "string", "")
    first = start_task(tmp_path, context)
    first.put(make_records(range(3)))
    first.flush({})
    with pytest.raises(PermanentError, match="metadata"):
        first.put(make_records([3], schema=metadata_as_string, extra={"metadata": "lab=main"}))
    restarted = start_task(tmp_path, context)  # a new process: it has seen no schema yet
    with pytest.raises(PermanentError, match=r"lab-results/0@3: incompatible type change of columns \['metadata'\]"):
        restarted.put(make_records([3], schema=metadata_as_string, extra={"metadata": "lab=main"}))
    restarted.put(make_records(range(4, 6)))
    restarted.flush({})
    assert duckdb.sql(f"select _kafka_offset, metadata from read_parquet('{tmp_path}/**/*.parquet', "
                      "union_by_name=true) order by 1").fetchall() == [(i, {"lab": "main"}) for i in (0, 1, 2, 4, 5)]


def test_a_schema_another_task_wrote_meanwhile_is_checked_before_a_new_schema_is_accepted(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task0, task1 = start_task(tmp_path, context), start_task(tmp_path, context)  # one task per partition
    task0.put(make_records(range(2), partition=0))
    task1.put(make_records(range(2), partition=1))
    task0.flush({})
    task1.flush({})
    specimen_text = with_extra_field(lab_result_schema(), "specimen")
    task0.put(make_records(range(2, 4), partition=0, schema=specimen_text, extra={"specimen": "serum"}))
    task0.flush({})  # after task1 last looked at the manifest
    widened = with_field_type("version", "long", 1)
    task1.put(make_records(range(2, 4), partition=1, schema=widened))  # compatible with both
    task1.flush({})
    specimen_code = with_extra_field(lab_result_schema(), "specimen", ["null", "long"])
    with pytest.raises(PermanentError, match=r"lab-results/1@4: .*\['specimen'\]"):
        task1.put(make_records([4], partition=1, schema=specimen_code, extra={"specimen": 7}))
    assert len(manifests(tmp_path)) == 3 and len(rows(tmp_path)) == 8


def test_records_of_a_rejected_schema_cost_no_further_storage_requests(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    class Counting(LocalStorage):
        listings = 0

        def list_keys(self, folder: str) -> list[str]:
            self.listings += 1
            return super().list_keys(folder)

    first = start_task(tmp_path, context)
    first.put(make_records(range(3)))
    first.flush({})
    storage = Counting(tmp_path)
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), storage)
    task.start(context)
    metadata_as_string = with_field_type("metadata", "string", "")
    for offset in range(3, 6):  # the runtime isolates each bad record with its own put
        with pytest.raises(PermanentError, match=f"lab-results/0@{offset}: .*metadata"):
            task.put(make_records([offset], schema=metadata_as_string, extra={"metadata": "x"}))
    assert storage.listings == 1


def test_an_unreadable_schema_manifest_is_retriable_not_the_records_fault(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    (tmp_path / "topic=lab-results" / "_schemas").mkdir(parents=True)
    (tmp_path / "topic=lab-results" / "_schemas" / "0123.arrow").write_bytes(b"not arrow")
    task = start_task(tmp_path, context)
    with pytest.raises(RetriableError, match="_schemas/0123.arrow"):
        task.put(make_records(range(3)))


def test_schema_manifest_is_written_once_and_before_the_first_data_file_with_that_schema(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    written: list[str] = []  # published, in order, by both processes

    class Recording(LocalStorage):
        @contextlib.contextmanager
        def open_object(self, key: str) -> Iterator[IO[bytes]]:
            with super().open_object(key) as out:
                yield out
            written.append(key)

    def recording_task() -> WarehouseSinkTask:
        task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), Recording(tmp_path))
        task.start(context)
        return task

    task = recording_task()
    task.put(make_records(range(3)))
    task.flush({})
    task.put(make_records(range(3, 6)))
    task.flush({})
    recording_task().put(make_records(range(6, 9)))  # a restart with the same schema
    (manifest,) = manifests(tmp_path)
    assert [k.rsplit("/", 2)[-2] for k in written] == ["_schemas", "hour=06", "hour=06"]
    assert written[0] == manifest
    stored = pa.ipc.open_file(tmp_path / manifest).schema
    assert stored.field("metadata").type == pa.map_(pa.string(), pa.field("value", pa.string(), nullable=False))
    assert stored.field("_kafka_offset").type == pa.int64()


def test_unflushed_schema_manifest_is_written_by_the_retry_after_a_failed_flush(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    class DownOnce(LocalStorage):
        down = True

        def open_object(self, key: str):  # type: ignore[no-untyped-def]
            if self.down:
                self.down = False
                raise RetriableError("store unavailable")
            return super().open_object(key)

    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), DownOnce(tmp_path))
    task.start(context)
    batch = make_records(range(3))
    task.put(batch)
    with pytest.raises(RetriableError):
        task.flush({})  # the manifest write failed, so no data file was written either
    assert files(tmp_path) == [] and manifests(tmp_path) == []
    task.abort()
    task.put(batch)  # the schema is already accepted in this process: no new check
    task.flush({})
    assert len(manifests(tmp_path)) == 1 and len(files(tmp_path)) == 1


@pytest.mark.parametrize("fmt", ["avro", "jsonl"])
def test_formats_not_combined_by_column_name_write_no_schema_manifest(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, fmt: str) -> None:
    task = start_task(tmp_path, context, warehouse_format=fmt)
    task.put(make_records(range(3)))
    task.flush({})
    assert manifests(tmp_path) == []


# --- only encoding errors are the records' fault ---

class FailingWrites:
    """The task's format, with ``write`` raising ``error`` (a stand-in for pyarrow/fastavro/the disk)."""

    def __init__(self, real: Any, error: BaseException) -> None:
        self.real, self.error = real, error
        self.extension = real.extension

    def prepare(self, avro_schema: dict[str, Any]) -> Any:
        return self.real.prepare(avro_schema)

    def arrow_schema(self, prepared: Any) -> pa.Schema | None:
        return self.real.arrow_schema(prepared)

    def write(self, out: IO[bytes], prepared: Any, records: Any, values: Any = None) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "raised"), [
    (pa.ArrowInvalid("bad value"), PermanentError),
    (pa.ArrowNotImplementedError("no such conversion"), PermanentError),
    (OverflowError("int too big"), PermanentError),
    (TypeError("not JSON serializable"), PermanentError),
    (OSError(errno.ENOSPC, "No space left on device"), RetriableError),
    (pa.ArrowMemoryError("malloc failed"), MemoryError),
    (MemoryError(), MemoryError),
    (RuntimeError("a bug"), RuntimeError),
])
def test_only_encoding_errors_are_permanent(tmp_path: Path, context: FakeContext, make_records: RecordFactory,
                                            error: BaseException, raised: type[BaseException]) -> None:
    task = start_task(tmp_path, context)
    task.format = FailingWrites(task.format, error)
    task.put(make_records(range(3)))
    with pytest.raises(raised) as caught:
        task.flush({})
    assert raised is not PermanentError or isinstance(caught.value, PermanentError)
    if isinstance(caught.value, RetriableError):
        assert str(caught.value).endswith("OSError ENOSPC")  # no file contents, no OS message text
    assert files(tmp_path) == []


class FullDisk(LocalStorage):
    """Writes fail with ENOSPC (while encoding, or when publishing) until ``full`` is cleared."""

    def __init__(self, root: Path, when: str) -> None:
        super().__init__(root)
        self.full, self.when = True, when

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        with super().open_object(key) as out:
            if self.full and self.when == "encoding":
                def no_space(_: bytes) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")
                out.write = no_space  # type: ignore[method-assign]
            yield out
            if self.full and self.when == "publishing":
                raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fmt", ["parquet", "avro", "jsonl"])
@pytest.mark.parametrize("when", ["encoding", "publishing"])
def test_disk_full_is_retriable_and_the_retry_loses_nothing(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, fmt: str, when: str) -> None:
    storage = FullDisk(tmp_path, when)
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_format=fmt), storage)
    task.start(context)
    batch = make_records(range(5))
    task.put(batch)
    with pytest.raises(RetriableError, match="ENOSPC"):
        task.flush({})
    storage.full = False
    task.abort()
    task.put(batch)
    task.flush({})
    assert files(tmp_path) == [f"topic=lab-results/dt=2024-06-10/hour=06/lab-results+0+0000000000.{fmt}"]


# --- a round's storage work ends before max.poll.interval.ms could drop the task ---

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowUploads(LocalStorage):
    """Each object takes 600 ms to publish (an upload); the keys published are recorded."""

    def __init__(self, root: Path, clock: Clock) -> None:
        super().__init__(root)
        self.clock = clock
        self.published: list[str] = []

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        with super().open_object(key) as out:
            yield out
            self.clock.now += 0.6
        self.published.append(key)


def test_flush_past_its_deadline_stops_before_the_next_object_and_the_retry_rewrites_the_same_keys(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    clock = Clock()

    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_flush_timeout_ms=1000),
                             SlowUploads(tmp_path, clock), clock=clock)
    task.start(context)
    batch = make_records(range(3), ts=lambda i: T0 + i * HOUR_MS)  # three objects
    task.put(batch)
    with pytest.raises(RetriableError, match=r"over WAREHOUSE_FLUSH_TIMEOUT_MS \(1000 ms\), before .*\+0000000001"):
        task.flush({})  # manifest at 0 ms, object 0 at 600 ms, object 1 would start at 1200 ms
    assert len(files(tmp_path)) == 1
    task.abort()  # the runtime polls Kafka while it waits, then delivers the same records again
    clock.now += 60  # the wait does not count against the next round
    fast = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_flush_timeout_ms=1000),
                             LocalStorage(tmp_path), clock=clock)
    fast.start(context)
    fast.put(batch)
    fast.flush({})
    assert [f.rsplit("+", 1)[1] for f in files(tmp_path)] == ["0000000000.parquet", "0000000001.parquet",
                                                               "0000000002.parquet"]
    assert rows(tmp_path) == [(0, i) for i in range(3)]


def test_each_round_gets_its_own_deadline(tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    clock = Clock()
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_flush_timeout_ms=1000),
                             LocalStorage(tmp_path), clock=clock)
    task.start(context)
    task.put([])
    task.flush({})  # a round of dead letters only: nothing to write
    for start in (0, 3):
        clock.now += 5  # time between rounds (consuming, idle) is not the round's
        task.put(make_records(range(start, start + 3)))
        task.flush({})
    assert len(rows(tmp_path)) == 6


def test_a_flush_deadline_that_could_outlast_max_poll_interval_fails_at_start(
        tmp_path: Path, context: FakeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_MAX_POLL_INTERVAL_MS", "60000")
    with pytest.raises(ConfigError, match="WAREHOUSE_FLUSH_TIMEOUT_MS .* KAFKA_MAX_POLL_INTERVAL_MS"):
        start_task(tmp_path, context)  # 90 s default
    start_task(tmp_path, context, warehouse_flush_timeout_ms=50_000)


@pytest.mark.parametrize("bad", [0, 2, 99])
def test_a_corrupt_value_is_dead_lettered_and_its_neighbours_written_in_the_same_objects(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, bad: int) -> None:
    records = make_records(range(100))
    records[bad].raw_value = (records[bad].raw_value or b"")[:14]  # framing intact, body truncated
    task = start_task(tmp_path, context)
    task.put(records)
    task.put(records)  # a retried put reports it again: the runtime sends it once
    task.abort()
    task.put(records)
    task.flush({})
    assert {(offset, stage) for offset, stage, _ in context.reported} == {(bad, "VALUE_CONVERTER")}
    assert all(message.startswith(f"lab-results/0@{bad}:") for _, _, message in context.reported)
    assert [offset for _, offset in rows(tmp_path)] == [n for n in range(100) if n != bad]
    first = 1 if bad == 0 else 0  # the object is named after the first record it holds
    assert files(tmp_path) == [f"topic=lab-results/dt=2024-06-10/hour=06/lab-results+0+{first:010d}.parquet"]


# --- the schema manifest: all-or-nothing loads, order-free verdicts, nested records, no phantoms ---

def manifest_with_column(root: Path, column: str) -> str:
    """The manifest key of the one stored schema that has ``column``."""
    (key,) = [m for m in manifests(root) if column in pa.ipc.open_file(root / m).schema.names]
    return key


def test_a_failed_manifest_read_marks_no_schema_seen(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    specimen_text = with_extra_field(lab_result_schema(), "specimen")
    first = start_task(tmp_path, context)
    first.put(make_records(range(2)))
    first.put(make_records(range(2, 4), schema=specimen_text, extra={"specimen": "serum"}))
    first.flush({})
    text_key = manifest_with_column(tmp_path, "specimen")

    class FlakyRead(LocalStorage):
        """Lists the specimen schema first, then fails reading the other one once."""
        failed = False

        def list_keys(self, folder: str) -> list[str]:
            return sorted(super().list_keys(folder), key=lambda k: k != text_key)

        def read_object(self, key: str) -> bytes:
            if key != text_key and not self.failed:
                self.failed = True
                raise RetriableError("store unavailable")
            return super().read_object(key)

    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), FlakyRead(tmp_path))
    task.start(context)
    specimen_code = with_extra_field(lab_result_schema(), "specimen", ["null", "long"])
    batch = make_records([4], schema=specimen_code, extra={"specimen": 7})
    with pytest.raises(RetriableError, match="store unavailable"):
        task.put(batch)
    task.abort()  # the runtime retries the same records
    with pytest.raises(PermanentError, match=r"lab-results/0@4: .*\['specimen'\]"):
        task.put(batch)


def ratio_schema(avro_type: str) -> dict[str, Any]:
    return with_extra_field(lab_result_schema(), "ratio", ["null", avro_type])


class Listing(LocalStorage):
    """Lists keys in ``order`` (S3 lists them ascending; the verdict must not depend on it)."""

    def __init__(self, root: Path, order: str) -> None:
        super().__init__(root)
        self.order = order

    def list_keys(self, folder: str) -> list[str]:
        return sorted(super().list_keys(folder), reverse=self.order == "descending")


@pytest.mark.parametrize("listing", ["ascending", "descending"])
def test_the_type_check_does_not_depend_on_the_manifest_listing_order(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, listing: str) -> None:
    first = start_task(tmp_path, context)
    first.put(make_records(range(2), schema=ratio_schema("float"), extra={"ratio": 0.5}))
    first.put(make_records(range(2, 4), schema=ratio_schema("double"), extra={"ratio": 0.5}))  # float widens
    first.flush({})

    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), Listing(tmp_path, listing))
    task.start(context)
    # long widens to double but not to float, and files with float exist
    with pytest.raises(PermanentError, match=r"\['ratio'\]"):
        task.put(make_records([4], schema=ratio_schema("long"), extra={"ratio": 7}))


@pytest.mark.parametrize("listing", ["ascending", "descending"])
def test_a_schema_already_in_the_manifest_is_accepted_as_is(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, listing: str) -> None:
    # Two tasks meet mutually incompatible schemas in the same round (README, "Layout"): both
    # are accepted, and files with both exist.
    task0, task1 = start_task(tmp_path, context), start_task(tmp_path, context)
    task0.put(make_records(range(2), partition=0, schema=ratio_schema("float"), extra={"ratio": 0.5}))
    task1.put(make_records(range(2), partition=1, schema=ratio_schema("long"), extra={"ratio": 7}))
    task0.flush({})
    task1.flush({})
    # rejecting long now would protect no reader
    restarted = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), Listing(tmp_path, listing))
    restarted.start(context)
    restarted.put(make_records(range(2, 4), partition=1, schema=ratio_schema("long"), extra={"ratio": 8}))
    restarted.flush({})
    with pytest.raises(PermanentError, match=r"lab-results/1@4: .*\['ratio'\]"):
        restarted.put(make_records([4], partition=1, schema=ratio_schema("string"), extra={"ratio": "x"}))
    assert len(manifests(tmp_path)) == 2 and len(rows(tmp_path)) == 6


def specimen_record(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return with_extra_field(lab_result_schema(), "specimen",
                            ["null", {"type": "record", "name": "Specimen", "fields": fields}])


def test_a_nested_optional_field_is_accepted_across_a_restart_and_a_nested_type_change_is_not(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    kind = {"name": "kind", "type": "string"}
    container = {"name": "container", "type": ["null", "string"], "default": None}
    first = start_task(tmp_path, context)
    first.put(make_records(range(2), schema=specimen_record([kind]), extra={"specimen": {"kind": "serum"}}))
    first.flush({})
    restarted = start_task(tmp_path, context)
    restarted.put(make_records(range(2, 4), schema=specimen_record([kind, container]),
                               extra={"specimen": {"kind": "blood", "container": "EDTA"}}))
    restarted.flush({})
    kind_code = {"name": "kind", "type": "long"}
    with pytest.raises(PermanentError, match=r"lab-results/0@4: .*\['specimen.kind'\]"):
        restarted.put(make_records([4], schema=specimen_record([kind_code]), extra={"specimen": {"kind": 3}}))
    assert duckdb.sql(f"select _kafka_offset, specimen from read_parquet('{tmp_path}/**/*.parquet', "
                      "union_by_name=true) order by 1").fetchall() == [
        (0, {"kind": "serum", "container": None}), (1, {"kind": "serum", "container": None}),
        (2, {"kind": "blood", "container": "EDTA"}), (3, {"kind": "blood", "container": "EDTA"})]


def test_manifest_reads_count_against_the_round_deadline_and_a_retry_resumes_them(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    first = start_task(tmp_path, context)
    for n, column in enumerate(("specimen", "container", "site")):  # three schemas in the manifest
        first.put(make_records([n], schema=with_extra_field(lab_result_schema(), column)))
    first.flush({})
    clock = Clock()

    class SlowReads(LocalStorage):
        reads = 0

        def read_object(self, key: str) -> bytes:
            clock.now += 0.6  # each manifest read takes 600 ms
            self.reads += 1
            return super().read_object(key)

    storage = SlowReads(tmp_path)
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_flush_timeout_ms=1000),
                             storage, clock=clock)
    task.start(context)
    batch = make_records(range(3, 6))
    with pytest.raises(RetriableError, match=r"over WAREHOUSE_FLUSH_TIMEOUT_MS .* before reading .*_schemas/"):
        task.put(batch)  # reads at 0 and 600 ms; the third would start at 1200 ms
    task.abort()
    clock.now += 60
    task.put(batch)  # the retry reads only the schema the failed load did not get to
    task.flush({})
    assert storage.reads == 3 and len(rows(tmp_path)) == 6


class EncodingFailsFor:
    """The task's format, failing to encode the rows of schemas that have ``column``."""

    def __init__(self, real: Any, column: str) -> None:
        self.real, self.column = real, column
        self.extension = real.extension

    def prepare(self, avro_schema: dict[str, Any]) -> Any:
        return self.real.prepare(avro_schema)

    def arrow_schema(self, prepared: Any) -> pa.Schema | None:
        return self.real.arrow_schema(prepared)

    def write(self, out: IO[bytes], prepared: Any, records: Any, *rest: Any) -> None:
        if self.column in self.real.arrow_schema(prepared).names:
            raise pa.ArrowInvalid("value does not fit")
        self.real.write(out, prepared, records, *rest)


def test_a_schema_whose_records_all_go_to_the_dlq_is_not_recorded(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.format = EncodingFailsFor(task.format, "specimen")
    good = make_records(range(3))
    bad = make_records(range(3, 5), schema=with_extra_field(lab_result_schema(), "specimen"),
                       extra={"specimen": "serum"})
    task.put(good + bad)
    with pytest.raises(PermanentError, match="cannot encode"):
        task.flush({})
    # What the runtime does: abort, then deliver in parts until the bad records are isolated.
    for part in [good] + [[record] for record in bad]:
        task.abort()
        task.put(part)
        if part is good:
            task.flush({})
        else:
            with pytest.raises(PermanentError):
                task.flush({})  # dead-lettered
    assert len(manifests(tmp_path)) == 1 and rows(tmp_path) == [(0, i) for i in range(3)]
    # No file has the dead-lettered schema, so it constrains no later schema.
    restarted = start_task(tmp_path, context)
    restarted.put(make_records([5], schema=with_extra_field(lab_result_schema(), "specimen", ["null", "long"]),
                               extra={"specimen": 7}))
    restarted.flush({})
    assert len(manifests(tmp_path)) == 2


def test_a_schema_whose_records_were_revoked_before_the_flush_is_not_recorded(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    task = start_task(tmp_path, context)
    task.put(make_records(range(3), partition=0))
    task.put(make_records(range(3), partition=1, schema=with_extra_field(lab_result_schema(), "specimen"),
                          extra={"specimen": "serum"}))
    task.close([("lab-results", 1)])  # the new owner writes partition 1 (and records its schema)
    task.flush({})
    assert len(manifests(tmp_path)) == 1 and rows(tmp_path) == [(0, i) for i in range(3)]


# --- a round too long for one deadline still finishes: the retry skips what it uploaded ---

@pytest.mark.parametrize("fmt", ["parquet", "avro", "jsonl"])
def test_a_round_longer_than_its_deadline_finishes_on_retry_uploading_each_object_once(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, fmt: str) -> None:
    clock = Clock()
    storage = SlowUploads(tmp_path, clock)
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}", warehouse_flush_timeout_ms=1000,
                                               warehouse_format=fmt), storage, clock=clock)
    task.start(context)
    batch = make_records(range(4), ts=lambda i: T0 + i * HOUR_MS)  # four objects of 600 ms each
    for attempt in range(1, 6):
        task.put(batch)
        try:
            task.flush({})
            break
        except RetriableError:
            task.abort()  # the runtime polls Kafka while it waits, then delivers the same records again
            clock.now += 60
    else:
        pytest.fail("the round never finished: every retry started over")
    assert attempt <= 3
    uploaded = [k for k in storage.published if "_schemas" not in k]
    assert sorted(uploaded) == files(tmp_path) and len(uploaded) == 4  # each exactly once
    if fmt == "parquet":
        assert rows(tmp_path) == [(0, i) for i in range(4)]


class FailsPublishingOnce(LocalStorage):
    """Publishes are recorded; the first publish of a key containing ``fail`` raises."""

    def __init__(self, root: Path, fail: str) -> None:
        super().__init__(root)
        self.fail = fail
        self.published: list[str] = []

    @contextlib.contextmanager
    def open_object(self, key: str) -> Iterator[IO[bytes]]:
        with super().open_object(key) as out:
            yield out
            if self.fail and self.fail in key:
                self.fail = ""
                raise RetriableError("store unavailable")
        self.published.append(key)


def test_a_retry_uploads_a_key_again_when_its_content_changed(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    storage = FailsPublishingOnce(tmp_path, fail="hour=07")
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"), storage)
    task.start(context)
    hours = {"ts": lambda i: T0 + (HOUR_MS if i == 1 else 0)}  # offset 1 in hour 07, the others in 06
    task.put(make_records([0, 1], **hours))
    with pytest.raises(RetriableError):
        task.flush({})
    task.abort()
    task.put(make_records([0, 1, 2], **hours))  # hour 06 now has offsets 0 and 2: other bytes, same key
    task.flush({})
    assert [k.rsplit("/", 2)[-2] for k in storage.published if "_schemas" not in k] == ["hour=06", "hour=06",
                                                                                         "hour=07"]
    assert rows(tmp_path) == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("handover", ["revoked", "lost"])
def test_a_retry_uploads_a_key_again_after_its_partition_was_owned_by_another_task(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory, handover: str) -> None:
    # A revoke reaches the task as close(); a loss or a revoke during a retry as abort() only,
    # so the assignment that gives the partition back (open) must forget what was uploaded.
    hours = {"ts": lambda i: T0 + (HOUR_MS if i == 1 else 0)}
    batch = make_records([0, 1, 2], **hours)
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{tmp_path}"),
                             FailsPublishingOnce(tmp_path, fail="hour=07"))
    task.start(context)
    task.put(batch)
    with pytest.raises(RetriableError):
        task.flush({})  # hour 06 (offsets 0 and 2) uploaded, hour 07 not
    task.abort()
    if handover == "revoked":
        task.close([("lab-results", 0)])
    other_owner = start_task(tmp_path, context)  # its round ends at offset 1, then it dies uncommitted
    other_owner.put(batch[:1])
    other_owner.flush({})
    task.open([("lab-results", 0)])  # the partition is back, from the same committed offset
    task.put(batch)
    task.flush({})
    assert rows(tmp_path) == [(0, 0), (0, 1), (0, 2)]  # hour 06 rewritten: offset 2 is not lost


def test_a_schema_of_a_failed_round_does_not_block_a_later_one(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    # Its records never reached a file (the round failed, or they went to the DLQ): the same
    # verdict a restarted process would give, which knows only the schemas with files.
    changed = version_as_string()
    task = start_task(tmp_path, context)
    task.put(make_records([0], extra={"version": "2"}, schema=changed))
    task.abort()
    task.put(make_records([0, 1]))  # version int again: no file has it as a string
    task.flush({})
    assert rows(tmp_path) == [(0, 0), (0, 1)]
    with pytest.raises(PermanentError, match="version"):  # now there is a file with the int column
        task.put(make_records([2], extra={"version": "2"}, schema=changed))


def test_a_round_whose_records_were_all_dead_lettered_leaves_no_schema_behind(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    changed = version_as_string()
    corrupt = make_records([0], extra={"version": "2"}, schema=changed)[0]
    corrupt.raw_value = (corrupt.raw_value or b"")[:14]
    task = start_task(tmp_path, context)
    task.put([corrupt])
    task.flush({})  # nothing to write: the record was reported
    task.put(make_records([1, 2]))  # version int: no file has it as a string
    task.flush({})
    assert rows(tmp_path) == [(0, 1), (0, 2)] and [o for o, _, _ in context.reported] == [0]


def test_interleaved_partitions_spanning_hours_keep_every_value(
        tmp_path: Path, context: FakeContext, make_records: RecordFactory) -> None:
    # Fetches of two partitions interleave in a batch and cross an hour: each partition's
    # records must stay in order and every value must survive either decoding path.
    records = [r for pair in zip(make_records(range(150), ts=lambda i: T0 + i * 60_000),
                                 make_records(range(150), partition=1, ts=lambda i: T0 + i * 60_000)) for r in pair]
    task = start_task(tmp_path, context)
    task.put(records)
    task.flush({})
    got = duckdb.sql("select _kafka_partition, _kafka_offset, event_id, timestamp, epoch_ms(observed_time), "
                     f"metadata, status from read_parquet('{tmp_path}/**/*.parquet') order by 1, 2").fetchall()
    expected = sorted((r.partition, r.offset, r.value["event_id"], r.value["timestamp"],  # type: ignore[index]
                       epoch_ms(r.value["observed_time"]), r.value["metadata"], r.value["status"])  # type: ignore[index]
                      for r in records)
    assert got == expected
    assert len({f.split("/")[2] for f in files(tmp_path)}) == 3  # hour=06, 07 and 08

"""The task against a local warehouse directory: keys, cuts and the exactly-once rewrite."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from common.errors import PermanentError, RetriableError
from warehouse_records import HOUR_MS, T0, FakeContext, RecordFactory, lab_result_schema, with_extra_field
from connectors.sink_warehouse.settings import WarehouseSettings
from connectors.sink_warehouse.storage import LocalStorage
from connectors.sink_warehouse.task import WarehouseSinkTask


def start_task(root: Path, context: FakeContext, **settings: object) -> WarehouseSinkTask:
    task = WarehouseSinkTask(WarehouseSettings(warehouse_url=f"file://{root}", **settings))
    task.start(context)
    return task


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


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
    record = make_records([7])[0]
    value = {**record.value, "timestamp": bad_time}  # type: ignore[dict-item]
    bad = type(record)(**{**{s: getattr(record, s) for s in record.__slots__}, "value": value})
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
    changed = lab_result_schema()
    for field in changed["fields"]:
        if field["name"] == "version":
            field["type"], field["default"] = "string", "1"
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
    tombstone = type(record)(**{**{s: getattr(record, s) for s in record.__slots__}, "value": None, "offset": 1})
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

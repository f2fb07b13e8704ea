from __future__ import annotations

from datetime import datetime, timezone

import pytest

from connectors.sink_warehouse.layout import InvalidEventTime, TimePartitioner, epoch_ms, object_key


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_utc_partition_is_date_and_hour() -> None:
    assert TimePartitioner("UTC").partition(ms("2024-06-10T06:59:59.999+00:00")) == "dt=2024-06-10/hour=06"
    assert TimePartitioner("UTC").partition(ms("2024-06-10T07:00:00+00:00")) == "dt=2024-06-10/hour=07"


def test_time_zone_moves_records_into_local_date_and_hour() -> None:
    partitioner = TimePartitioner("America/New_York")
    assert partitioner.partition(ms("2024-06-10T02:30:00+00:00")) == "dt=2024-06-09/hour=22"
    assert partitioner.partition(ms("2024-01-10T02:30:00+00:00")) == "dt=2024-01-09/hour=21"


def test_half_hour_zone_splits_a_utc_hour_exactly_at_the_local_hour() -> None:
    partitioner = TimePartitioner("Asia/Kolkata")  # UTC+05:30
    assert partitioner.partition(ms("2024-06-10T06:29:59.999+00:00")) == "dt=2024-06-10/hour=11"
    assert partitioner.partition(ms("2024-06-10T06:30:00+00:00")) == "dt=2024-06-10/hour=12"


def test_dst_fall_back_hour_is_one_partition() -> None:
    partitioner = TimePartitioner("America/New_York")  # 2024-11-03 01:xx happens twice
    assert partitioner.partition(ms("2024-11-03T05:30:00+00:00")) == "dt=2024-11-03/hour=01"
    assert partitioner.partition(ms("2024-11-03T06:30:00+00:00")) == "dt=2024-11-03/hour=01"


def test_cached_buckets_agree_with_direct_computation() -> None:
    partitioner = TimePartitioner("Europe/Amsterdam")
    start = ms("2024-03-31T00:00:00+00:00")  # spring forward at 01:00 UTC
    for step in range(0, 4 * 3_600_000, 7 * 60_000 + 13):
        t = start + step
        local = datetime.fromtimestamp(t / 1000, partitioner.zone)
        assert partitioner.partition(t) == f"dt={local:%Y-%m-%d}/hour={local:%H}"


def test_epoch_ms_accepts_long_and_timestamp_millis() -> None:
    assert epoch_ms(1_718_000_000_123) == 1_718_000_000_123
    assert epoch_ms(datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=timezone.utc)) == 1_718_000_000_123


@pytest.mark.parametrize("bad", [None, "2024-06-10", 1.5, True])
def test_epoch_ms_rejects_non_instants(bad: object) -> None:
    with pytest.raises(InvalidEventTime):
        epoch_ms(bad)


def test_out_of_range_time_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidEventTime):
        TimePartitioner("UTC").partition(10**18)


def test_object_key_is_hive_style_with_ten_digit_start_offset() -> None:
    key = object_key("warehouse/", "lab-results", 3, "dt=2024-06-10/hour=06", 42, "parquet")
    assert key == "warehouse/topic=lab-results/dt=2024-06-10/hour=06/lab-results+3+0000000042.parquet"
    assert object_key("", "t", 0, "dt=2024-06-10/hour=06", 1, "avro").startswith("topic=t/")

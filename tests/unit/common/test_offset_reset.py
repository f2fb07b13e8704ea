"""What `labconnect offsets` computes without a broker: reset times, the sinks' offsets tables
(on a real SQLite database) and the DLQ summary's grouping."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from common.dlq_tool import DeadLetterGroup
from common.errors import ConfigError
from common.offset_reset import ResetTarget, SqlOffsetStore
from common.offsets_tool import parse_datetime


def test_a_reset_time_needs_a_zone_and_is_read_as_that_instant() -> None:
    assert parse_datetime("2026-03-01T08:00:00Z") == 1_772_352_000_000
    assert parse_datetime("2026-03-01T09:00:00+01:00") == 1_772_352_000_000
    with pytest.raises(ConfigError, match="no time zone"):
        parse_datetime("2026-03-01T08:00:00")
    with pytest.raises(ConfigError, match="not an ISO 8601 time"):
        parse_datetime("yesterday")
    assert ResetTarget("datetime", 1_772_352_000_000).describe() == "2026-03-01T08:00:00.000+00:00"
    assert ResetTarget("latest").describe() == "latest"


@pytest.mark.parametrize("connector", ["billing", "notify"])
def test_a_sinks_offsets_table_is_written_and_read_back_per_topic(connector: str, tmp_path: Path) -> None:
    from common.database import make_engine

    if connector == "billing":
        from connectors.sink_billing import tables as billing

        table, metadata, now = billing.kafka_offsets, billing.metadata, lambda: datetime.now(timezone.utc)
    else:
        from connectors.sink_notify import tables as notify

        table, metadata, now = notify.kafka_offsets, notify.metadata, lambda: 0
    engine = make_engine(f"sqlite:///{tmp_path / 'sink.db'}")
    metadata.create_all(engine, tables=[table])
    store = SqlOffsetStore(engine, table, now, connector)
    store.write({("a", 0): 10, ("a", 1): 20, ("b", 0): 5})
    store.write({("a", 0): 3})  # moved back: an existing row is updated, the others stay
    assert store.read(["a"]) == {("a", 0): 3, ("a", 1): 20}
    assert store.read(["a", "b", "c"]) == {("a", 0): 3, ("a", 1): 20, ("b", 0): 5}
    store.close()


def test_an_unreadable_offsets_table_is_one_clear_error(tmp_path: Path) -> None:
    from common.database import make_engine
    from common.errors import ConnectorError
    from connectors.sink_billing import tables

    store = SqlOffsetStore(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"), tables.kafka_offsets,
                           lambda: datetime.now(timezone.utc), "billing database")
    with pytest.raises(ConnectorError, match="billing database: reading stored offsets failed: .*no such table"):
        store.read(["a"])


def test_dead_letters_group_with_their_count_time_span_and_returns() -> None:
    group = DeadLetterGroup("sink-billing", "TASK_PUT", "common.errors.PermanentError")
    for timestamp, redriven in ((2_000, False), (1_000, True), (-1, False), (3_000, True)):
        group.add(timestamp, redriven)
    assert (group.count, group.came_back, group.oldest_ms, group.newest_ms) == (4, 2, 1_000, 3_000)

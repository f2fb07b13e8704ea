"""Connectors used only by the runtime's tests, run as real processes.

``RecordingSink`` applies each record to a SQLite file idempotently (upsert on
topic/partition/offset) and appends every delivery to a log table, so a test can tell
"redelivered" (log) from "applied twice" (effects). ``CountingSource`` emits numbered
records with their number as the source offset. Crash points are chosen by environment
variables so the process can SIGKILL itself exactly at the dangerous moment.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from common.config import SinkSettings, SourceSettings
from common.connector import ConnectorSpec
from common.errors import PermanentError
from common.records import DeadLetter, SinkRecord, SourceRecord
from common.task import SinkTask, SourceTask, TopicPartition

LAB_RESULT = "com.drdangslab.events.LabResult"


def lab_result(n: int, patient: str = "p1") -> dict[str, Any]:
    return {"event_id": f"e{n}", "event_type": "LAB_RESULT_CREATED", "timestamp": 1_700_000_000_000 + n,
            "version": 1, "patient_id": patient, "test_id": "718-7", "test_name": "Hemoglobin",
            "result_value": str(n), "unit": "g/dL", "reference_range": "12-17", "status": "COMPLETED",
            "metadata": {}}


class RecordingSettings(SinkSettings):
    recording_db: str = "recording.db"
    recording_mode: Literal["idempotent", "transactional"] = Field(
        "idempotent", description="idempotent: upsert effects; transactional: plain inserts + offsets in the same "
        "database transaction (a double apply would show as a duplicate row)")
    crash_after_flushes: int = Field(0, description="SIGKILL right after the N-th successful flush")
    poison_value: str = "POISON"
    flush_delay_ms: int = 0


class RecordingSink(SinkTask):
    def __init__(self, settings: RecordingSettings) -> None:
        self.settings = settings
        self.buffer: list[SinkRecord] = []
        self.flushes = 0

    def start(self, context: Any) -> None:
        super().start(context)
        self.db = sqlite3.connect(self.settings.recording_db, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS effects (topic TEXT, partition INT, offset INT, event_id TEXT,"
                        " PRIMARY KEY (topic, partition, offset))")
        self.db.execute("CREATE TABLE IF NOT EXISTS deliveries (topic TEXT, partition INT, offset INT, pid INT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS applied (topic TEXT, partition INT, offset INT, event_id TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS offsets (topic TEXT, partition INT, next INT,"
                        " PRIMARY KEY (topic, partition))")

    def open(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        if self.settings.recording_mode != "transactional":
            return None
        stored = {(t, p): n for t, p, n in self.db.execute("SELECT topic, partition, next FROM offsets")}
        return {tp: stored[tp] for tp in partitions if tp in stored}

    def put(self, records: Sequence[SinkRecord]) -> None:
        for record in records:
            if record.value is not None and record.value.get("result_value") == self.settings.poison_value:
                raise PermanentError(f"poison record at offset {record.offset}")
        self.buffer.extend(records)

    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        if self.settings.flush_delay_ms:
            time.sleep(self.settings.flush_delay_ms / 1000)
        rows = [(r.topic, r.partition, r.offset, (r.value or {}).get("event_id")) for r in self.buffer]
        self.db.execute("BEGIN IMMEDIATE")
        if self.settings.recording_mode == "transactional":
            self.db.executemany("INSERT INTO applied VALUES (?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                                [(t, p, n) for (t, p), n in offsets.items()])
        self.db.executemany("INSERT OR REPLACE INTO effects VALUES (?, ?, ?, ?)", rows)
        self.db.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?)",
                            [(t, p, o, os.getpid()) for t, p, o, _ in rows])
        self.db.execute("COMMIT")
        self.buffer = []
        self.flushes += 1
        if self.settings.crash_after_flushes and self.flushes >= self.settings.crash_after_flushes:
            os.kill(os.getpid(), signal.SIGKILL)  # after the write, before the offset commit

    def abort(self) -> None:
        self.buffer = []


class CountingSettings(SourceSettings):
    counting_topic: str = "counts"
    counting_total: int = 1000
    counting_batch: int = 100
    crash_in_batch: int = Field(0, description="SIGKILL mid-transaction while writing batch N (1-based)")
    bad_batch: int = Field(0, description="batch N (1-based) is all bad input: dead letters only")


class CountingSource(SourceTask):
    def __init__(self, settings: CountingSettings) -> None:
        self.settings = settings
        self.batches = 0

    def start(self, context: Any) -> None:
        super().start(context)
        offset = context.offset({"source": "counter"})
        self.next = offset["n"] + 1 if offset else 0

    def poll(self) -> Sequence[SourceRecord | DeadLetter]:
        s = self.settings
        if self.next >= s.counting_total:
            time.sleep(0.05)
            return []
        end = min(self.next + s.counting_batch, s.counting_total)
        batch: list[SourceRecord | DeadLetter]
        if s.bad_batch and self.batches + 1 == s.bad_batch:
            batch = [DeadLetter(f"bad {n}".encode(), PermanentError(f"input {n} is malformed"),
                                source_partition={"source": "counter"}, source_offset={"n": n})
                     for n in range(self.next, end)]
        else:
            batch = [SourceRecord(s.counting_topic, f"p{n % 7}", lab_result(n, f"p{n % 7}"), LAB_RESULT,
                                  {"source": "counter"}, {"n": n}) for n in range(self.next, end)]
        self.next = end
        self.batches += 1
        if s.crash_in_batch and self.batches == s.crash_in_batch:
            os.environ["LABCONNECT_TEST_CRASH_NOW"] = "1"
        return batch

    def done(self) -> bool:
        return self.next >= self.settings.counting_total and os.environ.get("COUNTING_EXIT_WHEN_DONE") == "1"


RECORDING_SINK = ConnectorSpec("recording-sink", "sink", RecordingSettings, lambda s: RecordingSink(s),  # type: ignore[arg-type]
                               )
COUNTING_SOURCE = ConnectorSpec("counting-source", "source", CountingSettings, lambda s: CountingSource(s))  # type: ignore[arg-type]

"""The status reporter's heartbeat: re-published from its own thread, never behind a state change."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from common.status import StatusReporter, TaskState


class RecordingProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.values: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, key: str, value: str) -> None:
        with self._lock:
            self.keys.append(key)
            self.values.append(json.loads(value))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> RecordingProducer:
    import confluent_kafka

    made: list[RecordingProducer] = []

    def make(config: dict[str, Any]) -> RecordingProducer:
        made.append(RecordingProducer(config))
        return made[-1]

    monkeypatch.setattr(confluent_kafka, "Producer", make)
    reporter = StatusReporter("sink-x", 3, "sink", "status", {"bootstrap.servers": "unused:1"},
                              heartbeat_interval_ms=100)
    reporter.set(TaskState.RUNNING)
    time.sleep(0.55)
    reporter.set(TaskState.PAUSED)
    reporter.close()
    return made[0]


def test_the_state_is_republished_every_interval_with_a_fresh_heartbeat(producer: RecordingProducer) -> None:
    running = [v for v in producer.values if v["tasks"][0]["state"] == "RUNNING"]
    assert 4 <= len(running) <= 8, "the first value plus a heartbeat every 100 ms for 0.55 s"
    beats = [v["heartbeat"] for v in running]
    assert beats == sorted(beats) and beats[-1] - beats[0] >= 300
    assert {v["updated"] for v in running} == {running[0]["updated"]}, "updated is when the state changed"
    assert all(v["heartbeat_interval_ms"] == 100 for v in producer.values)
    assert set(producer.keys) == {"status-task-sink-x-3"}


def test_leaving_says_so_in_the_last_value(producer: RecordingProducer) -> None:
    states = [v["tasks"][0]["state"] for v in producer.values]
    assert "RUNNING" not in states[states.index("PAUSED"):], "no heartbeat of the old state after the change"
    assert [v["exited"] for v in producer.values[-2:]] == [False, True]
    assert producer.values[-1]["tasks"][0]["state"] == "PAUSED"

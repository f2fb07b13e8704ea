"""SourceWorker commits a transaction on its own thread while the task polls the next batch.

The process tests (real broker, SIGKILL mid-transaction) are in tests/integration; these pin
the order that keeps exactly-once: the next batch is polled during the commit but written only
after it returned, in its own transaction, and a failed commit aborts both batches, oldest first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import common._source_worker as source_worker
from common.config import SourceSettings
from common.connector import ConnectorSpec
from common.records import DeadLetter, SourceRecord
from common._source_worker import SourceWorker
from common.status import Control, StatusReporter
from common.task import SourceTask

PARTITION = {"source": "unit"}


class FakeTxProducer:
    """Records the transactional calls; the first commit waits until the test lets it go."""

    def __init__(self, fail_commit: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_commit = fail_commit
        self.open = False  # a transaction begun and not committed yet
        self.committing = threading.Event()
        self.release = threading.Event()

    def begin_transaction(self) -> None:
        self.open = True
        self.release.clear()
        self.calls.append(("begin", None))

    def produce(self, topic: str, value: Any = None, key: Any = None, **_: Any) -> None:
        self.calls.append(("produce", (topic, key)))

    def commit_transaction(self, _timeout: float) -> None:
        self.committing.set()
        assert self.release.wait(10), "the commit was never released"
        self.committing.clear()
        self.open = False
        self.calls.append(("commit", None))
        if self.fail_commit:
            raise KafkaException(KafkaError(KafkaError._STATE, "commit failed"))

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append(("abort", None))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


class BatchesTask(SourceTask):
    def __init__(self, producer: FakeTxProducer, batches: list[list[SourceRecord]]) -> None:
        self.producer = producer
        self.batches = batches
        self.polls_during_commit = 0
        self.reports: list[tuple[str, str | None]] = []

    def poll(self) -> Sequence[SourceRecord | DeadLetter]:
        if self.producer.open and self.producer.committing.wait(5):
            self.polls_during_commit += 1
            self.producer.calls.append(("poll during commit", None))
        batch = self.batches.pop(0) if self.batches else []
        self.producer.release.set()  # the commit in flight may return now
        return batch

    def on_committed(self, batch: Sequence[SourceRecord | DeadLetter]) -> None:
        self.reports.append(("committed", batch[0].key))

    def on_aborted(self, batch: Sequence[SourceRecord | DeadLetter], error: BaseException) -> None:
        self.reports.append(("aborted", batch[0].key))

    def done(self) -> bool:
        return not self.batches


class BytesSerde:
    def encode(self, topic: str, schema_name: str, value: dict[str, Any]) -> bytes:
        return repr(value).encode()


def _batch(name: str, size: int = 3) -> list[SourceRecord]:
    return [SourceRecord("out", f"{name}-{i}", {"n": i}, "unit.Schema", PARTITION, {"batch": name})
            for i in range(size)]


def _run(monkeypatch: pytest.MonkeyPatch, producer: FakeTxProducer, task: BatchesTask) -> SourceWorker:
    monkeypatch.setattr(source_worker, "read_source_offsets", lambda *args, **kwargs: {})
    settings = SourceSettings(kafka_bootstrap_servers="127.0.0.1:1", connector_name="unit-source")
    spec = ConnectorSpec("unit-source", "source", SourceSettings, lambda s: task)  # type: ignore[arg-type,return-value]
    worker = SourceWorker(spec, settings, task, StatusReporter("unit-source", 0, "source"), Control(),
                          serde=BytesSerde())  # type: ignore[arg-type]
    worker.producer = producer  # type: ignore[assignment]
    worker.dlq.producer = producer
    producer.init_transactions = lambda _timeout: None  # type: ignore[attr-defined]
    worker.run()
    return worker


def test_the_next_batch_is_polled_while_the_previous_commits_and_written_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeTxProducer()
    task = BatchesTask(producer, [_batch("a"), _batch("b")])
    _run(monkeypatch, producer, task)
    assert task.polls_during_commit >= 1
    steps = [name if name != "produce" else f"produce {arg[0]}" for name, arg in producer.calls]
    first_commit = steps.index("commit")
    assert steps[:first_commit + 1] == ["begin", "produce out", "produce out", "produce out",
                                        "produce connect-offsets", "poll during commit", "commit"]
    assert steps[first_commit + 1:] == ["begin", "produce out", "produce out", "produce out",
                                        "produce connect-offsets", "poll during commit", "commit"], \
        "b in its own transaction, after a's commit returned"
    assert task.reports == [("committed", "a-0"), ("committed", "b-0")]


def test_a_failed_commit_aborts_its_batch_and_the_one_polled_meanwhile_which_is_never_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeTxProducer(fail_commit=True)
    task = BatchesTask(producer, [_batch("a"), _batch("b"), _batch("c")])
    with pytest.raises(KafkaException):
        _run(monkeypatch, producer, task)
    assert task.reports == [("aborted", "a-0"), ("aborted", "b-0")], "oldest first"
    produced = [arg[1] for name, arg in producer.calls if name == "produce" and arg[0] == "out"]
    assert produced == ["a-0", "a-1", "a-2"], "the batch polled during the failed commit is not written"
    assert [name for name, _ in producer.calls].count("begin") == 1
    assert ("abort", None) in producer.calls

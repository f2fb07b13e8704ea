"""SinkWorker with a task that finishes its writes in the background (Kafka Connect's preCommit
and SinkTaskContext.offset): only durable offsets are committed, a failed background write
drops the batch and resumes every partition from the offsets the task stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from common.errors import RetriableError
from common.records import SinkRecord
from common._sink_worker import SinkContext, SinkWorker
from tests.unit.common.test_sink_worker_faults import FakeConsumer, PoisonAwareSink, _records, _worker


class BackgroundWriter(PoisonAwareSink):
    """Flush hands the write to 'the background'; ``fail_next`` makes the next flush find it failed."""

    def __init__(self, stored: dict[Any, int]) -> None:
        super().__init__()
        self.stored = stored
        self.durable_offsets: dict[Any, int] = {}
        self.fail_next = False
        self.opened: list[list[Any]] = []

    def open(self, partitions: Sequence[Any]) -> dict[Any, int]:
        self.opened.append(list(partitions))
        return {p: o for p, o in self.stored.items() if p in partitions}

    def flush(self, offsets: dict[Any, int]) -> None:
        if self.fail_next:
            self.fail_next = False
            self.context.rewind()
            raise RetriableError("the previous batch's commit failed in the background")
        super().flush(offsets)

    def pre_commit(self, offsets: dict[Any, int], wait: bool = False) -> dict[Any, int]:
        if wait and self.fail_next:
            self.fail_next = False
            self.context.rewind()
            raise RetriableError("the batch in flight failed")
        durable, self.durable_offsets = self.durable_offsets, {}
        return durable


class CommittedConsumer(FakeConsumer):
    def __init__(self, committed: dict[tuple[str, int], int]) -> None:
        super().__init__()
        self.group_offsets = committed

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)]

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.group_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]


def _started(task: BackgroundWriter, consumer: FakeConsumer | None = None) -> tuple[SinkWorker, FakeConsumer]:
    worker, fake, _ = _worker(task)
    if consumer is not None:
        worker.consumer = consumer  # type: ignore[assignment]
        fake = consumer
    task.start(SinkContext(worker.name, 0, worker.serde, worker._report, worker._request_rewind))
    return worker, fake


def _batch(worker: SinkWorker, records: list[SinkRecord]) -> None:
    worker.batch.extend(records, 10, 0.0)


def test_only_the_offsets_the_task_says_are_durable_are_committed() -> None:
    task = BackgroundWriter({})
    worker, consumer = _started(task)
    task.durable_offsets = {("t", 0): 90}  # the previous batch: its commit has finished
    _batch(worker, _records([{}, {}]))
    worker._flush_and_commit()
    assert task.durable == [100, 101]  # flushed (handed to the background) ...
    assert consumer.commits == [[("t", 0, 90)]]  # ... but the group only hears of what is durable


def test_a_failed_background_write_drops_the_batch_and_resumes_from_the_stored_offsets() -> None:
    task = BackgroundWriter({("t", 0): 50, ("t", 1): 7})
    consumer = CommittedConsumer({("t", 2): 12})
    worker, _ = _started(task, consumer)
    task.fail_next = True
    _batch(worker, _records([{}, {}, {}]))
    worker._flush_and_commit()
    assert task.durable == [] and consumer.commits == []  # nothing flushed after the failure, nothing committed
    assert worker.batch.records == [] and not worker._rewind_requested
    assert task.opened == [[("t", 0), ("t", 1), ("t", 2)]]
    # Stored offsets where the task has them, the group's committed offset elsewhere.
    assert sorted(consumer.seeks) == [("t", 0, 50), ("t", 1, 7), ("t", 2, 12)]


def test_a_partition_with_no_stored_or_committed_offset_resumes_from_the_beginning() -> None:
    task = BackgroundWriter({("t", 0): 50})
    consumer = CommittedConsumer({})
    worker, _ = _started(task, consumer)
    task.fail_next = True
    worker._settle()  # idle: the write in flight failed
    assert sorted(consumer.seeks) == [("t", 0, 50), ("t", 1, OFFSET_BEGINNING), ("t", 2, OFFSET_BEGINNING)]


def test_an_idle_consumer_lets_the_background_write_finish_and_commits_it() -> None:
    task = BackgroundWriter({})
    worker, consumer = _started(task)
    task.durable_offsets = {("t", 0): 7}
    worker._settle()
    assert consumer.commits == [[("t", 0, 7)]] and consumer.seeks == []


def test_a_failed_background_write_while_partitions_are_revoked_is_left_to_their_next_owner() -> None:
    task = BackgroundWriter({("t", 0): 50})
    worker, consumer = _started(task)
    task.fail_next = True
    worker._on_revoke(consumer, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    assert worker._callback_error is None and not worker._rewind_requested
    assert consumer.seeks == [] and consumer.commits == []

"""SinkWorker's fault paths with an in-process consumer, DLQ producer and task.

The behaviour end to end (real broker, SIGKILL) is in tests/integration/runtime; these
pin the corner cases that are hard to time against a broker: a dead letter the broker
rejects, a revoke during a retry, a poison record in the middle of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common.config import SinkSettings
from common.connector import ConnectorSpec
from common.dlq import DeadLetterQueue
from common.errors import PermanentError, RetriableError, TaskFailed, is_retriable
from common.records import SinkRecord
from common._sink_worker import SinkContext, SinkWorker, _Abandoned
from common.status import Control, StatusReporter
from common.task import SinkTask


class FakeDlqProducer:
    def __init__(self, reject_first: int = 0, rejection: int = KafkaError._MSG_TIMED_OUT) -> None:
        self.reject = reject_first
        self.rejection = rejection
        self.produced: list[dict[str, Any]] = []
        self._pending: list[tuple[Any, Any]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append(kwargs)
        self._pending.append((kwargs["on_delivery"], kwargs))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for callback, _ in pending:
            if self.reject:
                self.reject -= 1
                callback(KafkaError(self.rejection), None)
            else:
                callback(None, None)
        return 0


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.to_consume: list[list[Any]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = False) -> None:
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0)]

    def pause(self, _partitions: Any) -> None:
        pass

    def resume(self, _partitions: Any) -> None:
        pass

    def consume(self, _n: int, timeout: float = 0) -> list[Any]:
        return self.to_consume.pop(0) if self.to_consume else []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 103) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


class PoisonAwareSink(SinkTask):
    """Durable on flush; a record whose value is {"poison": True} fails permanently."""

    def __init__(self) -> None:
        self.buffer: list[SinkRecord] = []
        self.durable: list[int] = []
        self.flushed_offsets: list[dict[Any, int]] = []

    def put(self, records: Sequence[SinkRecord]) -> None:
        if any(r.value and r.value.get("poison") for r in records):
            raise PermanentError("bad record")
        self.buffer.extend(records)

    def flush(self, offsets: dict[Any, int]) -> None:
        self.durable.extend(r.offset for r in self.buffer)
        self.buffer = []
        self.flushed_offsets.append(dict(offsets))

    def abort(self) -> None:
        self.buffer = []


def _worker(task: SinkTask, **settings: Any) -> tuple[SinkWorker, FakeConsumer, FakeDlqProducer]:
    spec = ConnectorSpec("unit-sink", "sink", SinkSettings, lambda s: task)  # type: ignore[arg-type,return-value]
    values: dict[str, Any] = {"errors_tolerance": "all", "errors_retry_timeout_ms": 2000,
                              "errors_retry_delay_max_ms": 10, **settings}
    config = SinkSettings(kafka_bootstrap_servers="127.0.0.1:1", topics="t", connector_name="unit-sink", **values)
    worker = SinkWorker(spec, config, task, StatusReporter("unit-sink", 0, "sink"), Control())
    consumer, producer = FakeConsumer(), FakeDlqProducer()
    worker.consumer.close()
    worker.consumer = consumer  # type: ignore[assignment]
    worker.dlq.producer = producer
    return worker, consumer, producer


def _records(values: list[dict[str, Any]]) -> list[SinkRecord]:
    return [SinkRecord("t", 0, 100 + i, 0, None, value, None, b"v%d" % i, [], None) for i, value in enumerate(values)]


def test_a_dead_letter_the_broker_rejected_is_produced_again_before_the_commit() -> None:
    producer = FakeDlqProducer(reject_first=1)
    dlq = DeadLetterQueue(producer, "dead-letter", "c", 0)
    dlq.send(key=None, value=b"x", headers=None, timestamp_ms=None, origin_topic="t", partition=0, offset=5,
             stage="TASK_PUT", class_name="X", error=ValueError("bad"))
    with pytest.raises(RetriableError):
        dlq.flush()
    dlq.flush()  # the retry: produced again, now acknowledged
    assert [m["value"] for m in producer.produced] == [b"x", b"x"]


def test_a_dead_letter_the_broker_will_never_take_fails_the_task_instead_of_retrying_forever() -> None:
    producer = FakeDlqProducer(reject_first=1, rejection=KafkaError.MSG_SIZE_TOO_LARGE)
    dlq = DeadLetterQueue(producer, "dead-letter", "c", 0)
    dlq.send(key=None, value=b"x" * 10, headers=None, timestamp_ms=None, origin_topic="t", partition=0, offset=5,
             stage="TASK_PUT", class_name="X", error=ValueError("bad"))
    with pytest.raises(TaskFailed):
        dlq.flush()


def test_a_revoke_while_a_decode_is_retried_drops_the_batch_instead_of_committing_past_it() -> None:
    task = PoisonAwareSink()
    worker, consumer, _ = _worker(task)

    class RegistryDown:
        calls = 0

        def decode(self, data: bytes, reader: Any = None) -> Any:
            RegistryDown.calls += 1
            if RegistryDown.calls == 2:  # the rebalance arrives while the decode is being retried
                worker._on_revoke(consumer, [TopicPartition("t", 0)])
            raise RetriableError("schema registry unavailable (503)")

    class Message(FakeMessage):
        def value(self) -> bytes:
            return b"v"

        def key(self) -> None:
            return None

        def timestamp(self) -> tuple[int, int]:
            return (1, 0)

        def headers(self) -> None:
            return None

    worker.serde = RegistryDown()  # type: ignore[assignment]
    worker.batch.records = _records([{}])
    worker.batch.dirty = True
    worker._accept([Message("t", 0, 101), Message("t", 0, 102)])  # type: ignore[list-item]
    assert RegistryDown.calls >= 2 and worker._callback_error is None
    assert consumer.commits == [] and task.durable == []
    assert worker.batch.records == [] and not worker.batch.dirty  # redelivered to the next owner


def test_a_commit_failure_wrapped_in_kafka_exception_is_retriable() -> None:
    timed_out = KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True))
    assert is_retriable(timed_out)
    assert not is_retriable(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))


def test_a_poison_record_mid_batch_commits_every_durable_part_at_once() -> None:
    task = PoisonAwareSink()
    worker, consumer, producer = _worker(task)
    records = _records([{}, {}, {"poison": True}, {}, {}, {}])
    worker.batch.records = records
    worker._delivering = True
    worker._deliver(records, [TopicPartition("t", 0, 106)])

    assert task.durable == [100, 101, 103, 104, 105]
    assert [m["value"] for m in producer.produced] == [b"v2"]
    committed = [c[0][2] for c in consumer.commits]
    # Each part, the dead letter and the rest: monotonic, ending at the batch's position.
    assert committed == sorted(committed) and committed[-1] == 106
    assert 103 in committed  # the dead letter's own commit (after it was flushed to the DLQ)
    assert {(("t", 0), 103)} <= {(k, v) for o in task.flushed_offsets for k, v in o.items()}


def test_a_revoke_during_a_retry_abandons_the_batch_after_seeking_back_what_was_fetched() -> None:
    class Failing(PoisonAwareSink):
        def flush(self, offsets: dict[Any, int]) -> None:
            worker._revoked_while_delivering = True  # the rebalance happens during the retry wait
            raise RetriableError("database away")

    task = Failing()
    worker, consumer, _ = _worker(task)
    consumer.to_consume = [[FakeMessage("t", 3, 42)]]  # from a partition assigned meanwhile
    records = _records([{}, {}])
    worker._delivering = True
    with pytest.raises(_Abandoned):
        worker._deliver(records, [TopicPartition("t", 0, 102)])
    assert consumer.seeks == [("t", 3, 42)]  # fetched during the wait: not skipped
    assert consumer.commits == []


def test_retries_exhausted_fail_the_task_instead_of_splitting_the_batch() -> None:
    class Down(PoisonAwareSink):
        puts = 0

        def put(self, records: Sequence[SinkRecord]) -> None:
            Down.puts += 1
            raise RetriableError("database away")

    worker, consumer, producer = _worker(Down(), errors_retry_timeout_ms=0)
    with pytest.raises(TaskFailed):
        worker._deliver(_records([{}, {}, {}, {}]), [TopicPartition("t", 0, 104)])
    assert Down.puts == 1 and producer.produced == [] and consumer.commits == []


class ReportingSink(PoisonAwareSink):
    """Dead-letters a poison record itself (ErrantRecordReporter) and keeps the rest."""

    def put(self, records: Sequence[SinkRecord]) -> None:
        for record in records:
            if record.value and record.value.get("poison"):
                self.context.report(record, PermanentError("bad record"), "VALUE_CONVERTER")
            else:
                self.buffer.append(record)


def test_a_reported_record_is_dead_lettered_once_and_the_batch_commits_whole() -> None:
    task = ReportingSink()
    worker, consumer, producer = _worker(task)
    task.start(worker_context(worker))
    records = _records([{}, {"poison": True}, {}])
    worker.batch.records = records
    worker._put_and_flush(records, {("t", 0): 103})
    worker._put_and_flush(records, {("t", 0): 103})  # a retried put reports it again
    worker.dlq.flush()
    assert task.durable == [100, 102, 100, 102]
    assert [m["value"] for m in producer.produced] == [b"v1"]
    assert dict(producer.produced[0]["headers"])["__connect.errors.stage"] == b"VALUE_CONVERTER"


def test_a_reported_record_fails_the_task_when_errors_are_not_tolerated() -> None:
    task = ReportingSink()
    worker, _, producer = _worker(task, errors_tolerance="none")
    task.start(worker_context(worker))
    with pytest.raises(TaskFailed):
        task.put(_records([{"poison": True}]))
    assert producer.produced == []


def test_a_task_taking_raw_values_cannot_declare_reader_schemas() -> None:
    task = PoisonAwareSink()
    task.raw_values = True
    spec = ConnectorSpec("unit-sink", "sink", SinkSettings, lambda s: task,  # type: ignore[arg-type,return-value]
                         default_reader_schema="com.drdangslab.events.LabResult")
    config = SinkSettings(kafka_bootstrap_servers="127.0.0.1:1", topics="t", connector_name="unit-sink")
    with pytest.raises(ValueError, match="reader schemas"):
        SinkWorker(spec, config, task, StatusReporter("unit-sink", 0, "sink"), Control())


def worker_context(worker: SinkWorker) -> SinkContext:
    return SinkContext(worker.name, 0, worker.serde, worker._report)


class OffsetOwningSink(ReportingSink):
    """Stores its offsets in flush (like sink-billing): records what the DLQ held at each flush."""

    def __init__(self, producer: FakeDlqProducer) -> None:
        super().__init__()
        self.producer = producer
        self.acknowledged_at_flush: list[int] = []

    def flush(self, offsets: dict[Any, int]) -> None:
        self.acknowledged_at_flush.append(len(self.producer.produced) - len(self.producer._pending))
        super().flush(offsets)


def test_dead_letters_are_stored_before_a_sink_that_owns_its_offsets_moves_past_them() -> None:
    producer = FakeDlqProducer(reject_first=1)  # the first write of the dead letter is rejected
    task = OffsetOwningSink(producer)
    worker, _, _ = _worker(task)
    worker.dlq.producer = producer
    task.start(worker_context(worker))
    records = _records([{}, {"poison": True}, {}])
    worker.batch.records = records
    worker._put_and_flush(records, {("t", 0): 103})
    # flush ran once, after the dead letter was produced again and acknowledged
    assert task.acknowledged_at_flush == [2] and task.flushed_offsets == [{("t", 0): 103}]
    assert [m["value"] for m in producer.produced] == [b"v1", b"v1"]


def test_reported_records_count_against_the_dead_letter_limits() -> None:
    task = ReportingSink()
    worker, _, _ = _worker(task, errors_dlq_max_consecutive_count=3)
    task.start(worker_context(worker))
    for batch in range(2):
        records = _records([{"poison": True}, {"poison": True}])
        for n, record in enumerate(records):
            record.offset = 10 * batch + n
        worker.batch.clear()
        worker.batch.records = records
        if batch == 0:
            worker._deliver(records, [TopicPartition("t", 0, 2)])
        else:
            with pytest.raises(Exception, match="consecutive"):
                worker._deliver(records, [TopicPartition("t", 0, 12)])


def test_the_dead_letter_limit_failure_keeps_its_counts_in_the_trace_and_log_line() -> None:
    from common.worker import _safe_trace

    worker, _, _ = _worker(PoisonAwareSink(), errors_dlq_max_consecutive_count=3)
    records = _records([{"poison": True}] * 4)
    with pytest.raises(TaskFailed) as failed:
        for record in records:
            worker._report(record, PermanentError("bad record"), "TASK_PUT")
    trace = _safe_trace(failed.value)  # what status shows and the "task failed" line logs
    assert "dead-letter limit exceeded: 4 consecutive invalid records" in trace
    assert "<n>" not in trace

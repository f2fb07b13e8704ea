"""The source runtime: exactly-once writes of records and source offsets (KIP-618).

Each batch from ``task.poll()`` is written in one Kafka transaction together with
its dead letters and, on the offset storage topic (compacted, default
``connect-offsets``), the latest source offset of every source partition in the batch:
key ``["<connector>",{partition}]``, value the offset, both JSON as Kafka Connect
writes them. ``transactional.id`` is ``<connector>-<task>``, so starting a task fences
any older instance (a zombie can no longer commit). On start the offsets are read back
with ``read_committed``: a task killed mid-transaction resumes from its last
committed batch, and its partial batch was never visible to ``read_committed`` readers.

A transaction commits on its own thread (the client releases the GIL while it waits for
the broker) while the task polls its next batch; that batch is written only after the
commit returned, in the next transaction, so each transaction holds exactly the records
of one batch and the offsets they reached. If the commit fails, both the batch and the
one polled meanwhile are reported aborted (oldest first) and the source reads them again.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from common.config import SourceSettings
from common.connector import ConnectorSpec
from common.errors import RetriableError, TaskFailed, is_retriable
from common.heap import freeze_startup_heap
from common.kafka_clients import with_log
from common.metrics import PublishMeter, TaskMetrics
from common.records import DeadLetter, SourceRecord
from common.retry import RetryPolicy, call_with_retries
from common.serde import Serde, make_serde
from common.status import Control, StatusReporter, TaskState
from common.task import SourceTask
from common.tolerance import ErrorTolerance
from common.topic_reader import ReadStopped, ReadTimedOut, high_watermarks, read_to_end

log = logging.getLogger("common.source_worker")  # the public logger name: operators filter logs by it


def offset_key(connector: str, partition: dict[str, Any]) -> bytes:
    return json.dumps([connector, partition], separators=(",", ":"), sort_keys=True).encode()


class StopRequested(Exception):
    """An operator asked the task to end before it started (read_source_offsets was waiting)."""


def read_source_offsets(kafka: dict[str, str], topic: str, connector: str, timeout: float = 90.0,
                        should_stop: Callable[[], bool] = lambda: False) -> dict[str, dict[str, Any]]:
    """Latest committed offset per source partition of ``connector``, keyed by the
    partition's canonical JSON. Reads the offset topic up to the high watermark seen at
    the start. A read_committed consumer stops at the last stable offset, and a
    transaction still open there (a replay run killed mid-batch, say) would hide later
    committed offsets of this connector: so reading waits until that transaction is
    resolved (committed, aborted, or timed out by the broker) instead of returning
    stale offsets, unless ``should_stop()`` turns true meanwhile (StopRequested)."""
    consumer = Consumer({**kafka, "group.id": f"offset-reader-{connector}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "enable.partition.eof": True})
    prefix = json.dumps([connector], separators=(",", ":"))[:-1] + ","
    offsets: dict[str, dict[str, Any]] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        if metadata.topics[topic].error is not None:
            raise KafkaException(metadata.topics[topic].error)
        # Up to the high watermarks, not the last stable offset (see common.topic_reader): offsets
        # committed behind another transaction still open are waited for, not skipped.
        watermarks = high_watermarks({**kafka, "group.id": f"offset-reader-{connector}"}, topic,
                                     metadata.topics[topic].partitions, timeout)
        ends = {partition: end for partition, end in watermarks.items() if end > 0}  # empty ones hold nothing
        assignment = [TopicPartition(topic, partition, OFFSET_BEGINNING) for _, partition in ends]
        try:
            # Any consumer error fails the start at once rather than after the timeout.
            for batch in read_to_end(consumer, assignment, ends=ends, timeout=timeout, should_stop=should_stop,
                                     fail_on=lambda error: True):
                for message in batch:
                    text = (message.key() or b"").decode()
                    if text.startswith(prefix):
                        partition_json = json.dumps(json.loads(text)[1], separators=(",", ":"), sort_keys=True)
                        if message.value() is None:
                            offsets.pop(partition_json, None)
                        else:
                            offsets[partition_json] = json.loads(message.value())
        except ReadStopped:
            raise StopRequested(f"stop requested while reading {topic}") from None
        except ReadTimedOut:
            raise RetriableError(f"reading {topic} timed out (an open transaction not resolved in time?)") from None
    finally:
        consumer.close()
    return offsets


class SourceContext:
    def __init__(self, connector_name: str, task_id: int, offsets: dict[str, dict[str, Any]]) -> None:
        self.connector_name = connector_name
        self.task_id = task_id
        self._offsets = offsets

    def offset(self, partition: dict[str, Any]) -> dict[str, Any] | None:
        return self._offsets.get(json.dumps(partition, separators=(",", ":"), sort_keys=True))

    def _update(self, latest: dict[str, dict[str, Any]]) -> None:
        self._offsets.update(latest)


class _Commit:
    """One batch's transaction committing on its own thread."""

    def __init__(self, producer: Producer, batch: Sequence[SourceRecord | DeadLetter],
                 latest: dict[str, tuple[dict[str, Any], dict[str, Any]]], written: int, per_topic: dict[str, int],
                 began: float, on_done: Callable[[], None]) -> None:
        self.batch = batch
        self.latest = latest
        self.written = written
        self.per_topic = per_topic
        self.began = began
        self.ended = 0.0
        self.error: BaseException | None = None
        self._producer = producer
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run, name="transaction-commit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._producer.commit_transaction(60)
        except BaseException as exc:  # handed to the task's thread by wait()
            self.error = exc
        self.ended = time.perf_counter()
        try:
            self._on_done()
        except Exception:
            log.exception("waking the task failed")

    def wait(self) -> BaseException | None:
        self._thread.join()
        return self.error


class SourceWorker:
    def __init__(self, spec: ConnectorSpec, settings: SourceSettings, task: SourceTask, status: StatusReporter,
                 control: Control, serde: Serde | None = None, connector_name: str | None = None,
                 extra_headers: list[tuple[str, bytes]] | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.task = task
        self.status = status
        self.control = control
        self.name = connector_name or settings.connector_name or spec.name
        self.serde = serde or make_serde(settings.schema_registry_url, settings.schema_registry_auto_register,
                                         settings.schema_registry_properties(), settings.avro_codec)
        self.metrics = TaskMetrics(self.name, settings.task_id, "source")
        self.published = PublishMeter()
        self.retry = RetryPolicy(settings.errors_retry_timeout_ms, settings.errors_retry_delay_max_ms)
        self.kafka = with_log(settings.kafka_properties())  # librdkafka's lines in the connector's log format
        self.extra_headers = extra_headers or []
        self.producer = Producer({
            **self.kafka,
            "transactional.id": f"{self.name}-{settings.task_id}",
            "enable.idempotence": True,
            "transaction.timeout.ms": settings.transaction_timeout_ms,
            "partitioner": "murmur2_random",  # the Java client's partitioner: same key, same partition
            "linger.ms": 5,
            "compression.type": "lz4",
            **status.kafka.client_config(),  # GET /ready: is this producer connected?
        })
        self.errors = ErrorTolerance(settings, self.name, self.producer, task, self.metrics, log, transactional=True)
        self.dlq = self.errors.dlq
        self._delivery_errors: list[tuple[str, int, str]] = []  # (topic, error code, error name)
        self._in_flight: _Commit | None = None

    def run(self) -> None:
        # Fences older instances with the same transactional.id and aborts their open transaction.
        self.producer.init_transactions(60)
        try:
            offsets = read_source_offsets(self.kafka, self.settings.offset_storage_topic, self.name,
                                          should_stop=self.control.task_should_end)
        except StopRequested:
            self.status.set(TaskState.STOPPED)  # nothing started, nothing to flush
            return
        context = SourceContext(self.name, self.settings.task_id, offsets)
        self.task.start(context)
        freeze_startup_heap()
        self.status.set(TaskState.RUNNING)
        try:
            while not self.control.task_should_end():
                if self.control.paused.is_set():
                    self._settle(context)
                    self.status.set(TaskState.PAUSED)
                    self.control.wait_for_change(0.2)
                    continue
                if self.status.state == TaskState.PAUSED:
                    self.status.set(TaskState.RUNNING)
                batch = self._poll()  # while the previous batch commits
                self._settle(context, batch)
                if batch:
                    self._write(batch, context)
                elif self.task.done():
                    break
                else:  # idle: still serve the producer's statistics and log lines
                    self.producer.poll(0)
            self._settle(context)
            self.status.set(TaskState.STOPPED)
        finally:
            if self._in_flight is not None:  # poll failed while a commit was in flight: answer it
                try:
                    self._settle(context)
                except Exception:
                    log.warning("the last transaction did not commit; its batch is read again on restart")
            self.task.stop()

    def _poll(self) -> Sequence[SourceRecord | DeadLetter]:
        batch = call_with_retries(self.task.poll, self.retry, "poll", on_retry=self._on_retry,
                                  wait=self._wait_unless_ending)
        if batch is None:
            return []
        if self.status.trace:
            self.status.set(TaskState.RUNNING)
        return batch

    def _wait_unless_ending(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.control.task_should_end():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.control.wait_for_change(remaining)
        return True

    def _on_retry(self, what: str, error: BaseException, delay: float) -> None:
        self.metrics.retries.inc()
        self.metrics.last_error.set_to_current_time()
        self.status.retrying(what, error, delay)

    def _write(self, batch: Sequence[SourceRecord | DeadLetter], context: SourceContext) -> None:
        """Begin the batch's transaction, produce its records, dead letters and source offsets,
        and start the commit; :meth:`_settle` waits for it."""
        latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        written = 0
        last_partition: dict[str, Any] | None = None
        last_key = ""
        # Records per topic, and a delivery report only for each topic's first record of the batch
        # (the publish latency sample): a failed record fails the commit anyway (the transaction
        # becomes abortable), so the batch costs no Python callback per record.
        per_topic: dict[str, int] = {}
        delivered = self._delivered
        produce = self.producer.produce
        encode = self.serde.encode
        extra_headers = self.extra_headers
        began = time.perf_counter()
        self.producer.begin_transaction()
        try:
            for item in batch:
                partition = item.source_partition
                if partition is not None and partition is not last_partition:
                    # Tasks share one partition dict across a batch: one canonical key per dict.
                    last_partition = partition
                    last_key = json.dumps(partition, separators=(",", ":"), sort_keys=True)
                if isinstance(item, DeadLetter):
                    self._dead_letter(item.payload, item.key, item.headers, item.stage, item.error)
                    if partition is not None and item.source_offset is not None:
                        latest[last_key] = (partition, item.source_offset)
                    continue
                record = item
                latest[last_key] = (record.source_partition, record.source_offset)
                if record.value is None:
                    value = None
                else:
                    try:
                        value = encode(record.topic, record.schema, record.value)
                    except Exception as exc:
                        if is_retriable(exc):
                            raise
                        self._dead_letter(json.dumps(record.value, default=str).encode(),
                                          record.key.encode() if record.key else None, record.headers,
                                          "VALUE_CONVERTER", exc)
                        self.task.on_record_failed(record, exc)
                        continue
                headers = record.headers + extra_headers if extra_headers else record.headers
                topic = record.topic
                count = per_topic.get(topic)
                per_topic[topic] = 1 if count is None else count + 1
                try:
                    produce(topic, value, record.key, headers=headers or None, timestamp=record.timestamp_ms or 0,
                            on_delivery=delivered if count is None else None)
                except BufferError:  # local queue full: let deliveries drain, then again
                    self._produce(topic, {"value": value, "key": record.key, "headers": headers or None,
                                          "timestamp": record.timestamp_ms or 0,
                                          "on_delivery": delivered if count is None else None})
                written += 1
            for index, (partition, offset) in enumerate(latest.values()):
                self._produce(self.settings.offset_storage_topic, {
                    "key": offset_key(self.name, partition),
                    "value": json.dumps(offset, separators=(",", ":"), sort_keys=True).encode(),
                    "on_delivery": delivered if index == 0 else None,
                })
            if latest:
                per_topic[self.settings.offset_storage_topic] = len(latest)
            self.published.written(per_topic)
        except BaseException as exc:
            self._delivery_errors.clear()
            self.published.discard()
            self._abort(batch, exc)
            raise
        self._in_flight = _Commit(self.producer, batch, latest, written, per_topic, began, self.task.wake)

    def _settle(self, context: SourceContext, polled: Sequence[SourceRecord | DeadLetter] = ()) -> None:
        """Wait for the transaction in flight, then report it to the task. ``polled`` is a
        batch read meanwhile: on a failed commit it is reported aborted too (it was read
        past the offsets that did not commit) and never written."""
        commit, self._in_flight = self._in_flight, None
        if commit is None:
            return
        error = commit.wait()
        failed = self._delivery_failure(commit.per_topic)
        if failed is not None and (error is None or isinstance(error, KafkaException)):
            # The commit only says "message(s) failed delivery": say which topic and why.
            failed.__cause__, error = error, failed
        if error is not None:
            self._delivery_errors.clear()
            self.published.discard()
            try:
                self._abort(commit.batch, error)
            finally:
                if polled:
                    self._report_aborted(polled, error)
            raise error
        self.published.publish()
        context._update({k: v for k, (_, v) in commit.latest.items()})
        self.metrics.source_record_write.inc(commit.written)
        self.metrics.offset_commit.inc()
        self.errors.record_valid(commit.written)
        self.task.on_committed(commit.batch)

    def _produce(self, topic: str, kwargs: dict[str, Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append((msg.topic(), err.code(), err.name()))
        else:
            self.published.latency_sample(msg)

    def _delivery_failure(self, per_topic: dict[str, int]) -> RetriableError | None:
        """The batch's failed deliveries as one error naming each topic and reason (topic names
        are identifiers, never PHI), or None when every report said delivered. Only each topic's
        first record of a batch reports its delivery: a failure there stands for the batch's
        records to that topic (a topic-wide error fails them all; any failure aborts them all)."""
        if not self._delivery_errors:
            return None
        failed: dict[str, tuple[int, str]] = {}
        for topic, code, name in self._delivery_errors:
            failed.setdefault(topic, (code, name))
        reasons = []
        for topic, (code, name) in failed.items():
            missing = code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
            reasons.append(f"{per_topic.get(topic, 1)} to topic {topic}: " + (
                f"the topic does not exist ({name}; create it, e.g. `labconnect topics create`)" if missing else name))
        total = sum(per_topic.get(topic, 1) for topic in failed)
        return RetriableError(f"{total} records failed delivery: {'; '.join(reasons)}")

    def _dead_letter(self, payload: bytes, key: bytes | None, headers: list[tuple[str, bytes]], stage: str,
                     error: BaseException) -> None:
        self.errors.check(stage, error)
        self.errors.dead_letter(key=key, value=payload, headers=headers, timestamp_ms=None, origin=None,
                                stage=stage, error=error)

    def close_on_failure(self) -> None:
        """After a failure: nothing to commit; pending transactions were aborted."""
        self.producer.flush(5)

    def _abort(self, batch: Sequence[SourceRecord | DeadLetter], error: BaseException) -> None:
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                raise TaskFailed("producer fenced or fatal error: another instance took over") from exc
        finally:
            self._report_aborted(batch, error)

    def _report_aborted(self, batch: Sequence[SourceRecord | DeadLetter], error: BaseException) -> None:
        try:
            self.task.on_aborted(batch, error)
        except Exception:
            log.exception("on_aborted failed")

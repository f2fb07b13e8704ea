"""The sink runtime: consume, decode, batch, put/flush, dead-letter, commit.

Guarantees, in the order the code keeps them:

* Offsets are committed only after ``task.flush`` succeeded and the DLQ producer has
  flushed, and the committed offset is the consumer's *position* (offsets are not
  contiguous: transaction markers and compaction leave gaps).
* A batch is flushed when it reaches ``FLUSH_MAX_RECORDS`` or ``FLUSH_MAX_BYTES``, when
  its oldest record is ``FLUSH_MAX_AGE_MS`` old, or when a partition with buffered
  records has received nothing for ``FLUSH_IDLE_MS``; each flush is followed by a
  commit before anything more is consumed.
* Retriable failures are retried with backoff while the partitions are paused (the
  consumer keeps polling, so it stays in the group); past ``ERRORS_RETRY_TIMEOUT_MS``
  the task fails. A permanent failure splits the batch in halves until the poison
  record is isolated; it goes to the DLQ and its batch-mates are delivered.
* On revocation and on shutdown the batch is flushed and committed synchronously.
* A task that finishes its writes in the background (its own offsets in its own store)
  names the offsets that are durable (``pre_commit``); only those are committed. When
  such a write fails the task asks for a rewind: the batch in hand is dropped and every
  partition resumes from the offsets the task stored.

So a SIGKILL at any moment loses nothing: whatever was not committed is redelivered,
and sinks make a redelivered record a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from common.config import SinkSettings
from common.connector import ConnectorSpec
from common.errors import ConnectorError, TaskFailed, is_retriable, safe_message
from common.heap import freeze_startup_heap
from common.kafka_clients import with_log
from common.metrics import ConsumeMeter, ConsumerLag, TaskMetrics, with_stats_listener
from common.records import SinkRecord
from common.retry import RetryPolicy, call_with_retries
from common.serde import Serde, SerializationError, make_serde
from common.status import Control, StatusReporter, TaskState
from common.task import SinkTask, TopicPartition as TP
from common.tolerance import ErrorTolerance

log = logging.getLogger("common.sink_worker")  # the public logger name: operators filter logs by it


class _Abandoned(Exception):
    """Partitions were revoked while a batch was being retried: drop it, it is redelivered."""


class _Rewound(Exception):
    """The task asked to resume from its stored offsets: drop the batch, it is redelivered."""


class SinkBatch:
    """Records consumed since the last commit, with the bookkeeping flush triggers need."""

    def __init__(self) -> None:
        self.records: list[SinkRecord] = []
        self.bytes = 0
        self.started = 0.0
        self.last_seen: dict[TP, float] = {}
        self.dirty = False  # something (maybe only dead letters) awaits a commit
        self.reported: set[tuple[str, int, int]] = set()  # records the task dead-lettered itself

    def extend(self, records: list[SinkRecord], size: int, now: float) -> None:
        """Add one fetch's records (``size``: their key and value bytes)."""
        if not records:
            return
        if not self.records:
            self.started = now
        self.records.extend(records)
        self.bytes += size
        last_seen = self.last_seen
        topic, partition = None, -1
        for record in records:  # a fetch comes in runs of one partition: one dict write per run
            if record.partition != partition or record.topic != topic:
                topic, partition = record.topic, record.partition
                last_seen[(topic, partition)] = now
        self.dirty = True

    def clear(self) -> None:
        self.records = []
        self.bytes = 0
        self.last_seen.clear()
        self.dirty = False
        self.reported = set()


class SinkContext:
    def __init__(self, connector_name: str, task_id: int, serde: Serde,
                 report: Callable[[SinkRecord, BaseException, str], None],
                 rewind: Callable[[], None] | None = None) -> None:
        self.connector_name = connector_name
        self.task_id = task_id
        self._serde = serde
        self.report = report
        self._rewind = rewind
        self.can_rewind = rewind is not None

    def rewind(self) -> None:
        if self._rewind is None:
            raise RuntimeError("this runtime cannot rewind a task")
        self._rewind()

    def writer_schema(self, schema_ref: str) -> dict[str, Any]:
        return self._serde.writer_schema(schema_ref)

    def decode(self, raw_value: bytes) -> dict[str, Any]:
        return self._serde.decode(raw_value)[0]


class SinkWorker:
    def __init__(self, spec: ConnectorSpec, settings: SinkSettings, task: SinkTask, status: StatusReporter,
                 control: Control, serde: Serde | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.task = task
        self.status = status
        self.control = control
        self.name = settings.connector_name or spec.name
        self.serde = serde or make_serde(settings.schema_registry_url, settings.schema_registry_auto_register,
                                         settings.schema_registry_properties(), settings.avro_codec)
        self.metrics = TaskMetrics(self.name, settings.task_id, "sink")
        self.retry = RetryPolicy(settings.errors_retry_timeout_ms, settings.errors_retry_delay_max_ms)
        kafka = with_log(settings.kafka_properties())  # librdkafka's lines in the connector's log format
        group = f"connect-{self.name}"
        self.consumed = ConsumeMeter(group, settings.topic_list)
        self.lag = ConsumerLag(group)
        self.consumer = Consumer(with_stats_listener({
            **settings.group_membership(self.name),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            **kafka,
            **status.kafka.client_config(),  # GET /ready: is this consumer connected?
        }, self.lag.on_stats))  # kafka_consumer_lag, from the statistics librdkafka computes anyway
        dlq_producer = Producer({"enable.idempotence": True, "linger.ms": 5, **kafka})
        self.errors = ErrorTolerance(settings, self.name, dlq_producer, task, self.metrics, log)
        self.dlq = self.errors.dlq
        self.batch = SinkBatch()
        self._reader_by_topic = {topic: spec.reader_schema(topic) for topic in settings.topic_list}
        if task.raw_values and any(self._reader_by_topic.values()):
            # Raw values are handed on as written: a reader schema would silently not apply.
            raise ValueError(f"{spec.name}: a task taking raw values cannot declare reader schemas")
        self._delivering = False
        self._revoked_while_delivering = False
        self._rewind_requested = False
        self._callback_error: BaseException | None = None
        self._assigned: list[TopicPartition] = []
        self._committed: dict[TP, int] = {}  # what this task last committed, per partition
        self._next_marker_check = 0.0
        self._shutdown_deadline = float("inf")  # set when a shutdown begins

    # ----------------------------------------------------------------- main loop
    def run(self) -> None:
        self.task.start(SinkContext(self.name, self.settings.task_id, self.serde, self._report, self._request_rewind))
        freeze_startup_heap()
        self.consumer.subscribe(self.settings.topic_list, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.status.set(TaskState.RUNNING)
        s = self.settings
        try:
            while not self.control.task_should_end():
                if self.control.paused.is_set():
                    self._pause_loop()
                    continue
                # Never more than FLUSH_MAX_RECORDS in one batch: it bounds memory and transaction size.
                room = max(1, min(s.consume_batch_size, s.flush_max_records - len(self.batch.records)))
                messages = self.consumer.consume(room, timeout=self._poll_timeout())
                self._raise_callback_error()
                if messages:
                    self._accept(messages)
                else:  # idle: serve the DLQ producer's log lines (they wait in its queue until polled)
                    self.dlq.producer.poll(0)
                    if not self.batch.dirty and self._settle():
                        self._commit_past_markers()  # only once nothing is in flight: positions are durable
                if self._should_flush(time.monotonic()):
                    self._flush_and_commit()
            self._shutdown()
        finally:
            self.task.stop()

    def _poll_timeout(self) -> float:
        if not self.batch.dirty:
            return 0.5
        return min(0.1, self.settings.flush_idle_ms / 4000.0)

    def _accept(self, messages: list[Message]) -> None:
        now = time.monotonic()
        decode = self._peek if self.task.raw_values else self.serde.decode
        readers = self._reader_by_topic
        accepted: list[SinkRecord] = []
        size = 0
        for message in messages:
            error = message.error()
            if error is not None:
                _check_consumer_error(error)
                continue
            topic = message.topic()
            raw_value = message.value()
            raw_key = message.key()
            value: dict[str, Any] | None = None  # stays None for a task that decodes raw values itself
            schema_ref: str | None = None
            if raw_value is not None:
                try:
                    value, schema_ref = decode(raw_value, readers.get(topic))
                except Exception as exc:
                    if not is_retriable(exc):
                        self._dead_letter_message(message, exc, "VALUE_CONVERTER")
                        continue
                    # Not the record's fault (e.g. the schema registry is down): retry it. A
                    # rebalance meanwhile must not flush and commit past this fetch (the revoke
                    # callback sees a delivery in progress): the batch and the rest are dropped
                    # and fetched again by whoever owns the partitions next.
                    self._delivering = True
                    try:
                        decoded = self._retrying(lambda: decode(raw_value, readers.get(topic)), "value decode")
                    except _Abandoned:
                        log.warning("partitions revoked while retrying a decode; the batch will be redelivered")
                        self.task.abort()
                        self.dlq.discard_unsent()
                        self.batch.clear()
                        return
                    finally:
                        self._delivering = False
                        self._revoked_while_delivering = False
                    if decoded is None:
                        raise TaskFailed("value decode abandoned") from exc
                    value, schema_ref = decoded
            try:
                key = raw_key.decode() if raw_key is not None else None
            except UnicodeDecodeError as exc:
                self._dead_letter_message(message, exc, "KEY_CONVERTER")
                continue
            accepted.append(SinkRecord(topic, message.partition(), message.offset(), message.timestamp()[1], key,
                                       value, raw_key, raw_value, message.headers() or [], schema_ref))
            size += len(raw_value or b"") + len(raw_key or b"")
        self.batch.extend(accepted, size, now)
        self.metrics.sink_record_read.inc(len(messages))
        self.consumed.consumed(messages)

    def _peek(self, raw_value: bytes, reader_schema: str | None) -> tuple[None, str]:
        """For ``raw_values`` tasks: framing and writer schema checked, body left encoded."""
        return None, self.serde.peek(raw_value)

    def _should_flush(self, now: float) -> bool:
        batch, s = self.batch, self.settings
        if not batch.dirty:
            return False
        if not batch.records:
            return True  # only dead letters: commit past them
        if len(batch.records) >= s.flush_max_records or batch.bytes >= s.flush_max_bytes:
            return True
        if (now - batch.started) * 1000 >= s.flush_max_age_ms:
            return True
        idle = s.flush_idle_ms / 1000.0
        return any(now - seen >= idle for seen in batch.last_seen.values())

    # ------------------------------------------------------------ flush + commit
    def _flush_and_commit(self) -> None:
        if not self.batch.dirty:
            return
        offsets = self._positions()
        records = self.batch.records
        started = time.monotonic()
        self._delivering = True
        try:
            if records:
                self._deliver(records, offsets)
            elif offsets:  # only dead letters: a sink that owns its offsets must move them too
                self._put_and_flush([], {(tp.topic, tp.partition): tp.offset for tp in offsets})
            self._retrying(self.dlq.flush, "dead-letter flush")
            self._commit_durable({(tp.topic, tp.partition): tp.offset for tp in offsets})
        except _Abandoned:
            log.warning("partitions revoked during retries; the batch will be redelivered")
            self.task.abort()
            self.dlq.discard_unsent()
        except _Rewound:
            self._resume_from_stored()
        finally:
            self._delivering = False
            self._revoked_while_delivering = False
            self.batch.clear()
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        if (self.status.state != TaskState.RUNNING or self.status.trace) and not self.control.paused.is_set():
            self.status.set(TaskState.RUNNING)  # recovered: clears the retry trace

    def _note_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _commit_past_markers(self) -> None:
        """Idle with nothing buffered, a position past the last commit means only transaction
        markers were read since (a source's commit marker follows its last record): commit it,
        so that the group's lag (end of partition minus committed offset) gets back to 0."""
        now = time.monotonic()
        if self.batch.dirty or not self._assigned or now < self._next_marker_check:
            return
        self._next_marker_check = now + 1.0
        committed = self._committed
        ahead = [tp for tp in self.consumer.position([TopicPartition(tp.topic, tp.partition) for tp in self._assigned])
                 if tp.offset >= 0 and committed.get((tp.topic, tp.partition)) != tp.offset]
        if not ahead:
            return
        try:
            self.consumer.commit(offsets=ahead, asynchronous=False)
        except KafkaException as exc:  # a rebalance under way, say: the next idle moment tries again
            log.debug("commit past transaction markers failed: %s", safe_message(exc))
            return
        self._note_committed(ahead)

    def _positions(self) -> list[TopicPartition]:
        """Committable positions of the partitions that have something in this batch."""
        touched = {(r.topic, r.partition) for r in self.batch.records} | set(self.batch.last_seen)
        if not touched and self._assigned:
            touched = {(tp.topic, tp.partition) for tp in self._assigned}
        if not touched:
            return []
        positions = self.consumer.position([TopicPartition(t, p) for t, p in touched])
        return [tp for tp in positions if tp.offset >= 0]

    def _attempt(self, records: Sequence[SinkRecord], offsets: dict[TP, int]) -> Exception | None:
        """Put and flush ``records`` (counted valid when that worked); the error when the batch
        failed for something in it, to be split or dead-lettered. A failure of the task itself,
        a rewind or an abandoned batch propagates."""
        try:
            self._put_and_flush(records, offsets)
        except (TaskFailed, _Abandoned, _Rewound, MemoryError):
            raise
        except Exception as exc:
            return exc
        self.errors.record_valid(self._valid_count(records))
        return None

    def _deliver(self, records: Sequence[SinkRecord], positions: list[TopicPartition]) -> None:
        final = {(tp.topic, tp.partition): tp.offset for tp in positions}
        failure = self._attempt(records, final)
        if failure is not None:
            self.errors.check("put", failure, as_cause=True)
            log.warning("batch failed permanently (%s); isolating the bad record", type(failure).__name__,
                        extra={"count": len(records)})
            self._split(records, final)

    def _valid_count(self, records: Sequence[SinkRecord]) -> int:
        """Delivered records the task did not report as bad (those count as invalid)."""
        reported = self.batch.reported
        if not reported:
            return len(records)
        return sum(1 for r in records if (r.topic, r.partition, r.offset) not in reported)

    def _put_and_flush(self, records: Sequence[SinkRecord], offsets: dict[TP, int]) -> None:
        """put + flush, retrying retriable failures; raises on a permanent one."""
        def attempt() -> None:
            try:
                self.task.put(records)
                # Dead letters (the task's own reports, a split's poison record) are stored before
                # flush: a sink that keeps its offsets moves them past those records in flush.
                self.dlq.flush()
                self.task.flush(offsets)
            except BaseException as exc:
                self.task.abort()
                if self._rewind_requested:
                    raise _Rewound() from exc
                raise
        self._retrying(attempt, "put/flush")
        self.metrics.sink_record_send.inc(len(records))

    def _split(self, records: Sequence[SinkRecord], final: dict[TP, int], last: bool = True) -> None:
        """Deliver ``records`` in halves until the poison records are isolated and dead-lettered.

        Every part that becomes durable (and every dead letter) is committed at once: a crash
        in the middle of a split then resumes exactly at a part boundary, so a sink whose
        output is named by its first offset never leaves overlapping outputs behind."""
        if len(records) == 1:
            record = records[0]
            offsets = _offsets_through(records, final, last=last)
            failure = self._attempt(records, offsets)
            if failure is not None:
                # A raw_values task that finds a corrupt body reports it as a converter error.
                stage = "VALUE_CONVERTER" if isinstance(failure, SerializationError) else "TASK_PUT"
                self._dead_letter_record(record, failure, stage)
                self._put_and_flush([], offsets)  # a sink that owns its offsets moves past it too
            self._commit(offsets)
            return
        middle = len(records) // 2
        for part, is_last in ((records[:middle], False), (records[middle:], True)):
            # Many rounds may run back to back: poll (paused) so the group keeps this member.
            self._wait_paused(0.01)
            part_is_last = last and is_last
            offsets = _offsets_through(part, final, last=part_is_last)
            if self._attempt(part, offsets) is not None:
                self._split(part, final, last=part_is_last)
                continue
            self._commit(offsets)

    def _commit(self, offsets: dict[TP, int]) -> None:
        """Commit what is durable: dead letters first, then the consumer positions."""
        self._retrying(self.dlq.flush, "dead-letter flush")
        self._commit_durable(offsets)

    def _commit_durable(self, offsets: dict[TP, int], wait: bool = False) -> None:
        """Commit the positions the task says are durable (all of ``offsets`` unless it writes in the background)."""
        durable = self.task.pre_commit(offsets, wait=wait)
        positions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in sorted(durable.items())]
        if positions:
            self._retrying(lambda: self.consumer.commit(offsets=positions, asynchronous=False), "offset commit")
            self._note_committed(positions)
            self.metrics.offset_commit.inc()

    def _settle(self, revoking: bool = False) -> bool:
        """Let a task that writes in the background finish, and commit what became durable. A failed
        background write rewinds to the stored offsets (False), unless the partitions are going away
        anyway (their next owner resumes from the stored offsets)."""
        try:
            self._commit_durable({}, wait=True)
        except Exception as exc:
            if not self._rewind_requested:
                raise
            self.task.abort()
            if revoking:
                self._rewind_requested = False
                log.warning("a background write failed while partitions were released (%s); their next owner "
                            "resumes from the stored offsets", safe_message(exc))
                return False
            self._resume_from_stored()
            return False
        return True

    def _request_rewind(self) -> None:
        self._rewind_requested = True

    def _resume_from_stored(self) -> None:
        """Drop the batch and seek every assigned partition back to the offsets the task stored
        (the group's committed offset where it stored none: only durable offsets are committed)."""
        self._rewind_requested = False
        self.batch.clear()
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        if not assigned:
            return
        stored = self._retrying(lambda: self.task.open(assigned), "reading stored offsets") or {}
        missing = [TopicPartition(topic, partition) for topic, partition in assigned if (topic, partition) not in stored]
        committed = self._retrying(lambda: self.consumer.committed(missing, timeout=10),
                                   "reading committed offsets") if missing else []
        positions = [TopicPartition(t, p, offset) for (t, p), offset in stored.items() if (t, p) in assigned]
        positions += [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                      for tp in committed or []]
        for position in positions:
            self.consumer.seek(position)
        log.warning("a background write failed; resuming from the stored offsets",
                    extra={"partitions": len(positions)})

    def _retrying(self, operation: Any, what: str) -> Any:
        return call_with_retries(operation, self.retry, what, on_retry=self._on_retry, wait=self._wait_paused)

    def _on_retry(self, what: str, error: BaseException, delay: float) -> None:
        self.metrics.retries.inc()
        self.metrics.last_error.set_to_current_time()
        self.status.retrying(what, error, delay)

    def _wait_paused(self, seconds: float) -> bool:
        """Sleep while keeping group membership: partitions paused, consumer polled."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                messages = self.consumer.consume(1, timeout=min(remaining, 0.2))
                if messages:  # a partition assigned meanwhile is not paused: fetch it again later
                    self._rewind(messages)
                if self._revoked_while_delivering:
                    raise _Abandoned()
                if self.control.stop_requested.is_set() and self._past_shutdown_deadline():
                    raise TaskFailed("shutdown timeout reached while retrying")
        except KafkaException as exc:  # the consumer itself failed: not the batch's fault
            raise TaskFailed(f"consumer failed while waiting to retry: {safe_message(exc)}") from exc
        finally:
            current = self.consumer.assignment()
            if current:
                self.consumer.resume(current)
        return False  # a stop does not cut a retry short: the batch must still be made durable

    # ------------------------------------------------------------- dead letters
    def _dead_letter_message(self, message: Message, error: BaseException, stage: str) -> None:
        self.errors.check(stage, error)
        topic, partition = message.topic(), message.partition()
        self.errors.dead_letter(key=message.key(), value=message.value(), headers=message.headers(),
                                timestamp_ms=message.timestamp()[1], origin=(topic, partition, message.offset()),
                                stage=stage, error=error)
        self.batch.dirty = True
        self.batch.last_seen.setdefault((topic, partition), time.monotonic())

    def _report(self, record: SinkRecord, error: BaseException, stage: str = "TASK_PUT") -> None:
        """A task's own verdict on one record (Kafka Connect's ErrantRecordReporter): dead-letter
        it and let the rest of the batch go on. Once per batch, however often put is retried."""
        reported = (record.topic, record.partition, record.offset)
        if reported in self.batch.reported:
            return
        self.errors.check(stage, error)
        self.batch.reported.add(reported)
        self._dead_letter_record(record, error, stage)

    def _dead_letter_record(self, record: SinkRecord, error: BaseException, stage: str) -> None:
        self.errors.dead_letter(key=record.raw_key, value=record.raw_value, headers=record.headers,
                                timestamp_ms=record.timestamp_ms, stage=stage, error=error,
                                origin=(record.topic, record.partition, record.offset))

    # ---------------------------------------------------------------- rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            stored = self.task.open([(tp.topic, tp.partition) for tp in partitions])
            if stored:
                for tp in partitions:
                    if (tp.topic, tp.partition) in stored:
                        tp.offset = stored[(tp.topic, tp.partition)]
                consumer.assign(partitions)
            self._assigned = list(partitions)
            log.info("partitions assigned", extra={"count": len(partitions)})
        except BaseException as exc:
            self._callback_error = exc

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            if self._delivering:
                self._revoked_while_delivering = True
                return
            self._flush_and_commit()
            self._settle(revoking=True)
            self.task.close([(tp.topic, tp.partition) for tp in partitions])
            self._assigned = []
        except BaseException as exc:
            self._callback_error = exc

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): someone else may own them already; committing is unsafe.
        if self._delivering:  # a retrying delivery must give up, not write for the new owner
            self._revoked_while_delivering = True
            return
        self.task.abort()
        self.dlq.discard_unsent()
        self.batch.clear()
        self._assigned = []

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error

    # ----------------------------------------------------------------- pausing
    def _pause_loop(self) -> None:
        self._flush_and_commit()
        self.status.set(TaskState.PAUSED)
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        while self.control.paused.is_set() and not self.control.task_should_end():
            messages = self.consumer.consume(1, timeout=0.2)
            self._raise_callback_error()
            if messages:  # from a partition assigned during the pause
                self._rewind(messages)
        current = self.consumer.assignment()
        if current:
            self.consumer.resume(current)
        self.status.set(TaskState.RUNNING)

    def _rewind(self, messages: list[Message]) -> None:
        """Seek back to records fetched while paused (so none is skipped) and pause their partitions."""
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is None:
                first.setdefault((message.topic(), message.partition()), message.offset())
            else:
                _check_consumer_error(error)
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)

    # ---------------------------------------------------------------- shutdown
    def _past_shutdown_deadline(self) -> bool:
        return time.monotonic() > self._shutdown_deadline_now()

    def _shutdown_deadline_now(self) -> float:
        # Counted from the stop request, like the process watchdog, so a retry in progress
        # gives up in time for a clean close instead of being killed by the watchdog.
        requested = self.control.stop_requested_at
        if requested is None:
            return self._shutdown_deadline
        return min(self._shutdown_deadline, requested + self.settings.shutdown_timeout_ms / 1000.0)

    def _shutdown(self) -> None:
        """Stop fetching, flush, commit, leave the group."""
        self._shutdown_deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000.0
        self._flush_and_commit()
        self._settle(revoking=True)
        self.consumer.close()  # revokes: nothing left to flush
        self.lag.clear()
        self.dlq.flush(5)
        self.status.set(TaskState.STOPPED)

    def close_on_failure(self) -> None:
        """After a failure: leave the group without committing anything not flushed."""
        try:
            self.batch.clear()
            self.task.abort()
            self.lag.clear()
            self.consumer.close()
        except Exception:
            pass


def _check_consumer_error(error: KafkaError) -> None:
    """A fatal consumer error ends the task; others (end of partition, a topic not created
    yet, a broker briefly away) are librdkafka's to recover from."""
    # _FATAL: librdkafka raised a fatal error (a static member fenced by a newer one with the same
    # group.instance.id); the consumer is unusable from then on.
    if error.fatal() or error.code() == KafkaError._FATAL:
        # librdkafka's own words (no record content), kept readable in the status trace.
        raise ConnectorError(f"fatal Kafka consumer error: {error.str()}") from KafkaException(error)
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error: %s", error.name(), extra={"retriable": error.retriable()})


def _offsets_through(part: Sequence[SinkRecord], final: dict[TP, int], last: bool) -> dict[TP, int]:
    """Offsets to store when ``part`` (a prefix-closed slice of the batch) is durable.

    For the batch's last slice these are the consumer positions; for an earlier slice,
    the offset after its last record per partition — a safe resume point, since the
    broker skips to the next existing offset."""
    if last:
        return dict(final)
    offsets: dict[TP, int] = {}
    for record in part:
        offsets[(record.topic, record.partition)] = record.offset + 1
    return offsets

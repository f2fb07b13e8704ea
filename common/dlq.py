"""The dead-letter queue: bad records with Kafka Connect's error context headers.

A DLQ record keeps the original key, value, headers and timestamp byte-for-byte and
adds the ten ``__connect.errors.*`` headers. The exception message is passed through
:func:`common.errors.safe_message` and the stack trace holds only frames (file, line,
function), never locals or messages, so no PHI reaches the headers.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from common.errors import safe_message
from common.records import Headers

HEADER_PREFIX = "__connect.errors."
STAGES = ("TASK_POLL", "TASK_PUT", "TRANSFORMATION", "KEY_CONVERTER", "VALUE_CONVERTER",
          "HEADER_CONVERTER", "KAFKA_PRODUCE", "KAFKA_CONSUME")


class DlqLimitExceeded(Exception):
    """Too many bad records: the task fails instead of dead-lettering everything."""


@dataclass(frozen=True)
class DlqLimit:
    """As Arroyo's ``DlqLimit``: fail when the share of invalid records or the run of
    consecutive invalid records gets too high (a bad deploy, not bad data)."""

    max_invalid_ratio: float = 0.5
    max_consecutive_count: int = 1000
    min_records: int = 100


class DlqBudget:
    """Counts valid and invalid records against a :class:`DlqLimit`."""

    def __init__(self, limit: DlqLimit) -> None:
        self.limit = limit
        self.valid = 0
        self.invalid = 0
        self.consecutive = 0

    def record_valid(self, count: int = 1) -> None:
        if count:
            self.valid += count
            self.consecutive = 0

    def record_invalid(self) -> None:
        self.invalid += 1
        self.consecutive += 1
        if self.consecutive > self.limit.max_consecutive_count:
            raise DlqLimitExceeded(f"{self.consecutive} consecutive invalid records")
        total = self.valid + self.invalid
        if total >= self.limit.min_records and self.invalid / total > self.limit.max_invalid_ratio:
            raise DlqLimitExceeded(f"{self.invalid} of {total} records invalid")


def _stacktrace(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames[-20:]]
    return f"{type(error).__module__}.{type(error).__qualname__}\n" + "\n".join(lines)


def context_headers(*, topic: str, partition: int, offset: int, connector: str, task_id: int, stage: str,
                    class_name: str, error: BaseException) -> Headers:
    """The ten ``__connect.errors.*`` headers, UTF-8 encoded."""
    exc_class = f"{type(error).__module__}.{type(error).__qualname__}"
    values = {
        "topic": topic, "partition": str(partition), "offset": str(offset),
        "connector.name": connector, "task.id": str(task_id), "stage": stage,
        "class.name": class_name, "exception.class.name": exc_class,
        "exception.message": safe_message(error), "exception.stacktrace": _stacktrace(error),
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in values.items()]


class DeadLetterQueue:
    """Writes dead letters through a producer (the task's transactional producer for
    sources, so they commit with the batch; an idempotent producer for sinks, flushed
    before each offset commit)."""

    def __init__(self, producer: Any, topic: str, connector: str, task_id: int, context_headers: bool = True,
                 transactional: bool = False) -> None:
        """``transactional``: the producer's transaction owns failed writes (an abort drops
        the whole batch, which the source then reads again), so none are kept here."""
        self.producer = producer
        self.topic = topic
        self.connector = connector
        self.task_id = task_id
        self.with_context = context_headers
        self.sent = 0
        self._delivery_errors: list[str] = []
        self._failed: list[dict[str, Any]] = []  # rejected by the broker: produced again on flush
        self._permanent_rejection = False
        self.transactional = transactional

    def send(self, *, key: bytes | None, value: bytes | None, headers: Headers | None, timestamp_ms: int | None,
             origin_topic: str, partition: int, offset: int, stage: str, class_name: str,
             error: BaseException) -> None:
        all_headers = list(headers or [])
        if self.with_context:
            all_headers += context_headers(
                topic=origin_topic, partition=partition, offset=offset, connector=self.connector,
                task_id=self.task_id, stage=stage, class_name=class_name, error=error,
            )
        message: dict[str, Any] = {"key": key, "value": value, "headers": all_headers}
        if timestamp_ms:
            message["timestamp"] = timestamp_ms
        self._produce(message)
        self.sent += 1

    def _produce(self, message: dict[str, Any]) -> None:
        self.producer.produce(self.topic, **message, on_delivery=lambda err, _msg: self._delivered(err, message))
        self.producer.poll(0)

    def _delivered(self, err: Any, message: dict[str, Any]) -> None:
        if err is None or self.transactional:
            return
        self._failed.append(message)
        self._delivery_errors.append(err.name() if hasattr(err, "name") else type(err).__name__)
        retriable = getattr(err, "retriable", None)
        timed_out = getattr(err, "code", lambda: None)() == KafkaError._MSG_TIMED_OUT  # the broker was away
        if callable(retriable) and not retriable() and not timed_out:
            self._permanent_rejection = True

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every dead letter is acknowledged; raise if one was not.

        A dead letter the broker rejected is kept and produced again by the next flush
        (the caller retries): the offsets past it are committed only once it is stored."""
        from common.errors import RetriableError, TaskFailed

        failed, self._failed = self._failed, []
        while failed:
            try:
                self._produce(failed[0])
            except BaseException:
                self._failed = failed + self._failed  # nothing unsent is forgotten
                raise
            failed.pop(0)
        remaining = self.producer.flush(timeout)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            what = (f"dead-letter queue write failed ({remaining} pending, "
                    f"{len(errors)} rejected: {', '.join(sorted(set(errors)))})")
            if self._permanent_rejection:  # too large, not authorized, no such topic: retrying won't help
                raise TaskFailed(what)
            raise RetriableError(what)

    def discard_unsent(self) -> None:
        """Forget writes that failed (partitions were lost: the records are redelivered elsewhere)."""
        self._failed = []
        self._delivery_errors = []
        self._permanent_rejection = False

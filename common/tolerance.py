"""What a task does with a bad record: Kafka Connect's ``errors.tolerance``.

Kafka Connect keeps this policy in one place (``RetryWithToleranceOperator`` with the
``ErrantRecordReporter``) so that every stage that meets a bad record treats it alike.
:class:`ErrorTolerance` is that place for both runtimes: with ``errors.tolerance=none``
a bad record fails the task; otherwise it goes to the dead-letter queue, is counted
and logged (the error through :func:`safe_message`, never the record), and charged to
the :class:`DlqBudget`, so a flood of bad records still fails the task. The workers
keep what is Kafka-specific: where a record's bytes, timestamp and origin come from.
"""

from __future__ import annotations

import logging
from typing import Any

from common.config import WorkerSettings
from common.dlq import DeadLetterQueue, DlqBudget, DlqLimit
from common.errors import TaskFailed, safe_message
from common.metrics import TaskMetrics
from common.records import Headers

Origin = tuple[str, int, int]
"""Where a consumed record was read: topic, partition, offset."""


class ErrorTolerance:
    """The task's tolerance setting, dead-letter queue, dead-letter budget and error metrics."""

    def __init__(self, settings: WorkerSettings, connector: str, producer: Any, task: object,
                 metrics: TaskMetrics, log: logging.Logger, *, transactional: bool = False) -> None:
        """``producer`` writes the dead letters (``transactional``: the source's own, so
        they commit with its batch); ``task`` is named in each dead letter's headers;
        ``log`` is the worker's, so its dead-letter lines keep their logger name."""
        self.tolerates_errors = settings.errors_tolerance != "none"
        self.dlq = DeadLetterQueue(producer, settings.errors_deadletterqueue_topic_name, connector,
                                   settings.task_id, settings.errors_deadletterqueue_context_headers_enable,
                                   transactional=transactional)
        self.budget = DlqBudget(DlqLimit(settings.errors_dlq_max_invalid_ratio,
                                         settings.errors_dlq_max_consecutive_count, settings.errors_dlq_min_records))
        self.class_name = type(task).__qualname__
        self.metrics = metrics
        self.log = log

    def check(self, stage: str, error: BaseException, *, as_cause: bool = False) -> None:
        """Fail the task when errors are not tolerated. ``as_cause``: chain ``error`` as the
        failure's cause (the restart policy reads the cause to tell a fenced task)."""
        if self.tolerates_errors:
            return
        failure = TaskFailed(f"{stage} failed and errors.tolerance=none: {safe_message(error)}")
        if as_cause:
            raise failure from error
        raise failure

    def dead_letter(self, *, key: bytes | None, value: bytes | None, headers: Headers | None,
                    timestamp_ms: int | None, origin: Origin | None, stage: str, error: BaseException) -> None:
        """Send one bad record to the DLQ, count it and log it, then charge the budget.

        ``origin`` is None for a source's input (it was never read from Kafka): the
        context headers then say topic "" at partition and offset -1."""
        topic, partition, offset = origin or ("", -1, -1)
        self.dlq.send(key=key, value=value, headers=headers, timestamp_ms=timestamp_ms or None,
                      origin_topic=topic, partition=partition, offset=offset, stage=stage,
                      class_name=self.class_name, error=error)
        self.metrics.record_errors.inc()
        self.metrics.dlq_produce.inc()
        self.metrics.last_error.set_to_current_time()
        if origin is None:
            self.log.warning("input sent to the dead-letter queue at %s: %s", stage, safe_message(error),
                             extra={"error_class": type(error).__name__})
        else:
            self.log.warning("record sent to the dead-letter queue at %s: %s", stage, safe_message(error),
                             extra={"topic": topic, "partition": partition, "offset": offset,
                                    "error_class": type(error).__name__})
        try:
            self.budget.record_invalid()
        except Exception as exc:
            raise TaskFailed(f"dead-letter limit exceeded: {exc}") from exc

    def record_valid(self, count: int) -> None:
        """Records delivered fine: they dilute the invalid ratio and end a run of bad ones."""
        self.budget.record_valid(count)

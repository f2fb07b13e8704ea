"""Prometheus metrics, named after Kafka Connect's. Labels are identifiers only
(connector, task), never record contents."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LABELS = ("connector", "task")

SOURCE_RECORD_WRITE = Counter("labconnect_source_record_write", "Records written by a source task", _LABELS)
SINK_RECORD_READ = Counter("labconnect_sink_record_read", "Records read by a sink task", _LABELS)
SINK_RECORD_SEND = Counter("labconnect_sink_record_send", "Records made durable by a sink task", _LABELS)
OFFSET_COMMIT = Counter("labconnect_offset_commit_completion", "Offset commits (or transactions) completed", _LABELS)
RECORD_ERRORS = Counter("labconnect_total_record_errors", "Records that failed", _LABELS)
RETRIES = Counter("labconnect_total_retries", "Retried operations", _LABELS)
DLQ_PRODUCE = Counter("labconnect_deadletterqueue_produce_requests", "Records sent to the DLQ", _LABELS)
BATCH_SECONDS = Histogram("labconnect_put_batch_time_seconds", "Time to put and flush one batch", _LABELS,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAST_ERROR = Gauge("labconnect_last_error_timestamp_seconds", "When the last error happened", _LABELS)


class TaskMetrics:
    """The metric children of one task, bound once (label lookups stay off the hot path)."""

    def __init__(self, connector: str, task_id: int) -> None:
        labels = (connector, str(task_id))
        self.source_record_write = SOURCE_RECORD_WRITE.labels(*labels)
        self.sink_record_read = SINK_RECORD_READ.labels(*labels)
        self.sink_record_send = SINK_RECORD_SEND.labels(*labels)
        self.offset_commit = OFFSET_COMMIT.labels(*labels)
        self.record_errors = RECORD_ERRORS.labels(*labels)
        self.retries = RETRIES.labels(*labels)
        self.dlq_produce = DLQ_PRODUCE.labels(*labels)
        self.batch_seconds = BATCH_SECONDS.labels(*labels)
        self.last_error = LAST_ERROR.labels(*labels)

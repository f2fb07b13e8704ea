"""Prometheus metrics, named after Kafka Connect's. Labels are identifiers only
(connector, task), never record contents."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Sequence
from typing import Any

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

    def __init__(self, connector: str, task_id: int, kind: str) -> None:
        labels = (connector, str(task_id))
        TASK_INFO.labels(connector, str(task_id), kind).set(1)
        self.source_record_write = SOURCE_RECORD_WRITE.labels(*labels)
        self.sink_record_read = SINK_RECORD_READ.labels(*labels)
        self.sink_record_send = SINK_RECORD_SEND.labels(*labels)
        self.offset_commit = OFFSET_COMMIT.labels(*labels)
        self.record_errors = RECORD_ERRORS.labels(*labels)
        self.retries = RETRIES.labels(*labels)
        self.dlq_produce = DLQ_PRODUCE.labels(*labels)
        self.batch_seconds = BATCH_SECONDS.labels(*labels)
        self.last_error = LAST_ERROR.labels(*labels)


# Event metrics, named as the event-driven services of the lab name theirs. Labels are
# topic, partition and consumer group only. They are fed cheaply: deliveries are counted in
# the producer's existing delivery callback and handed to Prometheus once per batch; lag
# comes from librdkafka's statistics (every few seconds), never from per-record work.
EVENTS_PUBLISHED = Counter("kafka_events_published_total", "Records delivered to (and committed on) a topic",
                           ("topic",))
PUBLISH_LATENCY = Histogram("kafka_publish_latency_seconds",
                            "Produce call to broker acknowledgement, one sample per topic and batch", ("topic",),
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
EVENTS_CONSUMED = Counter("kafka_events_consumed_total", "Records a sink consumed from a topic",
                          ("topic", "consumer_group"))
CONSUMER_LAG = Gauge("kafka_consumer_lag", "Records between the group's committed offset and the end of the "
                     "partition (the last stable offset under read_committed)", ("topic", "partition", "consumer_group"))
TASK_INFO = Gauge("labconnect_task_info", "1 per task process: joins the kafka_* metrics (no connector label) "
                  "to their connector by instance", ("connector", "task", "type"))


class PublishMeter:
    """Counts what a source published, per topic, without Prometheus work per record: the
    producing code hands each batch's counts per topic to :meth:`written`, and the delivery
    report of each topic's first record in the batch (the one that waited longest in the
    producer's queue) to :meth:`latency_sample`. :meth:`publish` passes them to Prometheus
    once the batch's transaction committed; :meth:`discard` forgets them when it was aborted
    (an aborted record was never published to read_committed readers)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._latency: dict[str, float | None] = {}

    def written(self, counts: dict[str, int]) -> None:
        """A batch's records per topic."""
        for topic, count in counts.items():
            self._counts[topic] = self._counts.get(topic, 0) + count

    def latency_sample(self, message: Any) -> None:
        """The delivery report of a batch's first record of its topic: the latency sample, not a count."""
        self._latency.setdefault(message.topic(), message.latency())

    def publish(self) -> None:
        for topic, count in self._counts.items():
            EVENTS_PUBLISHED.labels(topic).inc(count)
            latency = self._latency.get(topic)
            if latency is not None and latency >= 0:
                PUBLISH_LATENCY.labels(topic).observe(latency)
        self.discard()

    def discard(self) -> None:
        self._counts = {}
        self._latency = {}


class ConsumeMeter:
    """Counts what a sink consumed, per topic, once per fetch."""

    def __init__(self, group: str, topics: Sequence[str]) -> None:
        self._children = {topic: EVENTS_CONSUMED.labels(topic, group) for topic in topics}
        self._group = group
        self._only = self._children[topics[0]] if len(topics) == 1 else None

    def consumed(self, messages: Sequence[Any]) -> None:
        if self._only is not None:  # the usual case, one topic: no look at the records at all
            self._only.inc(len(messages))
            return
        for topic, count in collections.Counter(m.topic() for m in messages).items():
            child = self._children.get(topic)
            if child is None:  # a topic matched by a pattern subscription
                child = self._children[topic] = EVENTS_CONSUMED.labels(topic, self._group)
            child.inc(count)


class ConsumerLag:
    """``kafka_consumer_lag`` from a consumer's librdkafka statistics: per assigned partition,
    ``consumer_lag`` (end of the partition minus the committed offset). Partitions no longer
    assigned are removed, so a revoked partition does not show a stale lag."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._shown: set[tuple[str, str]] = set()

    def on_stats(self, stats: dict[str, Any]) -> None:
        shown: set[tuple[str, str]] = set()
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, p in topic_stats.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if partition == "-1" or not p.get("desired") or lag < 0:
                    continue
                CONSUMER_LAG.labels(topic, partition, self.group).set(lag)
                shown.add((topic, partition))
        for topic, partition in self._shown - shown:
            CONSUMER_LAG.remove(topic, partition, self.group)
        self._shown = shown

    def clear(self) -> None:
        for topic, partition in self._shown:
            CONSUMER_LAG.remove(topic, partition, self.group)
        self._shown = set()


def with_stats_listener(config: dict[str, Any], listener: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``config`` whose ``stats_cb`` (if any, e.g. the readiness watch) also feeds ``listener``
    the parsed statistics; statistics are turned on if nothing asked for them yet."""
    previous = config.get("stats_cb")

    def on_stats(stats_json: str) -> None:
        if previous is not None:
            previous(stats_json)
        listener(json.loads(stats_json))

    return {"statistics.interval.ms": 5000, **config, "stats_cb": on_stats}

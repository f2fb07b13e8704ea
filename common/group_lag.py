"""How far a sink's consumer group is behind: committed offsets against the ends of the
partitions it reads, summed per group.

Every sink commits its position to its group ``connect-<name>`` after each flush, including
sinks that also keep offsets in their own database (sink-billing, the notify ledger: they
commit to the group right after their database transaction), so the group is the one place
to read lag for every sink. The end of a partition is its last stable offset (what a
``read_committed`` consumer can reach), so an open transaction does not count as lag.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

_NO_OFFSET = 0  # librdkafka's offsets below this (OFFSET_INVALID -1001, ...) mean "none committed"


@dataclass(frozen=True)
class GroupLag:
    """Records not yet committed by ``group``, per (topic, partition); ``error`` when unknown."""

    group: str
    partitions: dict[tuple[str, int], int] = field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int | None:
        return None if self.error else sum(self.partitions.values())


def _result(future: Future[Any], timeout: float) -> Any:
    return future.result(timeout=timeout)


def group_lag(admin: AdminClient, group: str, client: dict[str, Any], timeout: float = 10.0) -> GroupLag:
    """Lag of one consumer group over every partition of the topics it committed to or is
    assigned. A partition it never committed counts from its earliest offset (sinks start
    there: ``auto.offset.reset=earliest``). ``client`` is the Kafka client configuration
    (bootstrap servers, security) the committed offsets are read with."""
    try:
        metadata = admin.list_topics(timeout=timeout).topics
        every = [(topic, p) for topic, found in sorted(metadata.items()) if not topic.startswith("__")
                 for p in sorted(found.partitions)]
        committed = _committed(client, group, every, timeout)
        topics = {topic for topic, _ in committed} | _assigned_topics(admin, group, timeout)
        if not topics:
            return GroupLag(group)
        partitions = [(topic, p) for topic, p in every if topic in topics]
        ends = _offsets(admin, partitions, OffsetSpec.latest(), timeout)
        uncommitted = [tp for tp in partitions if tp not in committed]
        starts = _offsets(admin, uncommitted, OffsetSpec.earliest(), timeout) if uncommitted else {}
    except (KafkaException, TimeoutError) as exc:
        error = exc.args[0] if exc.args else exc
        return GroupLag(group, error=getattr(error, "str", lambda: str(error))() or type(exc).__name__)
    lag = {}
    for tp in partitions:
        position = committed[tp] if tp not in starts else starts[tp]
        lag[tp] = max(0, ends[tp] - position)
    return GroupLag(group, lag)


def _committed(client: dict[str, Any], group: str, partitions: list[tuple[str, int]],
               timeout: float) -> dict[tuple[str, int], int]:
    """The group's committed offsets, read without joining it: one OffsetFetch through a
    consumer. (AdminClient.list_consumer_group_offsets crashes the process while a new
    cluster's group coordinator is still loading: librdkafka#5040.)"""
    if not partitions:
        return {}
    reader = Consumer({**client, "group.id": group, "enable.auto.commit": False})
    try:
        found = reader.committed([TopicPartition(topic, p) for topic, p in partitions], timeout=timeout)
    finally:
        reader.close()
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= _NO_OFFSET}


def _assigned_topics(admin: AdminClient, group: str, timeout: float) -> set[str]:
    description = _result(admin.describe_consumer_groups([group], request_timeout=timeout)[group], timeout)
    return {tp.topic for member in description.members or []
            for tp in (member.assignment.topic_partitions if member.assignment else [])}


def _offsets(admin: AdminClient, partitions: list[tuple[str, int]], spec: OffsetSpec,
             timeout: float) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({TopicPartition(topic, p): spec for topic, p in partitions},
                                 isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout)
    return {(tp.topic, tp.partition): _result(future, timeout).offset for tp, future in futures.items()}

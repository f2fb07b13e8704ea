"""Reading Kafka partitions from where they are assigned to their end.

The source runtime reads its offsets back at start, ``labconnect status`` the status topic,
``labconnect dlq`` the dead-letter queue: each reads a topic "to its end". When a partition
has reached its end is subtle enough to be decided in one place:

* By default a partition has reached its end at its end-of-partition event
  (``enable.partition.eof``, which the consumer must set): the end as the consumer finds it
  when it gets there. For a ``read_committed`` consumer that is the last stable offset, in
  front of the first transaction still open.
* With ``ends``, a partition has reached its end once the consumer is at or past its end
  offset. Given the high watermarks fetched before reading (:func:`high_watermarks`), a
  ``read_committed`` consumer then also reads what was committed behind a transaction still
  open at the start: it waits until that transaction is resolved (committed, aborted, or
  timed out by the broker) instead of ending early at the last stable offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

Partition = tuple[str, int]  # (topic, partition number)

POLL_S = 0.5  # how long one consume call waits by default: how soon a timeout, stall or stop request is noticed


class EndNotReached(Exception):
    """Reading ended before every partition reached its end; ``pending`` holds those that did not."""

    def __init__(self, message: str, pending: Iterable[Partition]) -> None:
        super().__init__(message)
        self.pending = frozenset(pending)


class ReadTimedOut(EndNotReached):
    """``timeout`` passed, or nothing arrived for ``stall`` seconds, before every partition reached its end."""


class ReadStopped(EndNotReached):
    """``should_stop()`` turned true before every partition reached its end."""


def high_watermarks(kafka: Mapping[str, Any], topic: str, partitions: Iterable[int],
                    timeout: float) -> dict[Partition, int]:
    """The offset after the last record of each partition, records of open transactions included.

    A ``read_committed`` consumer would answer the last stable offset instead, so they are asked
    by a ``read_uncommitted`` consumer of its own, configured by ``kafka`` (with a ``group.id``)."""
    consumer = Consumer({**kafka, "isolation.level": "read_uncommitted"})
    try:
        return {(topic, partition): consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                                   timeout=timeout)[1]
                for partition in partitions}
    finally:
        consumer.close()


def _fatal(error: KafkaError) -> bool:
    return error.fatal()


def read_to_end(consumer: Consumer, assignment: Sequence[TopicPartition], *,
                ends: Mapping[Partition, int] | None = None, timeout: float | None = None,
                stall: float | None = None, should_stop: Callable[[], bool] = lambda: False,
                fail_on: Callable[[KafkaError], bool] = _fatal, batch_size: int = 500,
                poll_s: float = POLL_S) -> Iterator[list[Message]]:
    """Assign ``assignment`` (each partition with the offset to start from) to ``consumer`` and
    yield batches of its records until every partition reached its end (see the module's
    docstring; a partition without an entry in ``ends`` ends at its end-of-partition event).
    Each batch is what one consume call of up to ``poll_s`` seconds returned.

    Records that arrive from a partition after it reached its end are yielded too. Raises
    ReadTimedOut when ``timeout`` seconds pass, or ``stall`` seconds pass without anything
    arriving, before every partition reached its end; ReadStopped when ``should_stop()`` turns
    true before that; KafkaException for a consumer error ``fail_on`` accepts (by default a
    fatal one; the client retries the others by itself)."""
    ends = ends or {}
    consumer.assign(list(assignment))
    pending = {(tp.topic, tp.partition) for tp in assignment}
    started = last_arrival = time.monotonic()
    while pending:
        now = time.monotonic()
        if timeout is not None and now - started > timeout:
            raise ReadTimedOut(f"not read to the end in {timeout:g}s", pending)
        if stall is not None and now - last_arrival > stall:
            raise ReadTimedOut(f"nothing read for {stall:g}s before the end", pending)
        if should_stop():
            raise ReadStopped("stop requested before the end", pending)
        messages = consumer.consume(batch_size, timeout=poll_s)
        if messages:
            last_arrival = time.monotonic()
        batch = []
        for message in messages:
            error = message.error()
            if error is None:
                batch.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                partition = (message.topic(), message.partition())
                # Below its end offset, the consumer waits at a transaction still open.
                if message.offset() >= ends.get(partition, 0):
                    pending.discard(partition)
            elif fail_on(error):
                raise KafkaException(error)
        if batch:
            yield batch
        waiting = pending.intersection(ends)
        if waiting and not messages:
            # Once the transaction the consumer waited at is resolved, the end-of-partition event
            # is not repeated (an aborted one leaves no records to deliver): ask for the position.
            for tp in consumer.position([TopicPartition(topic, partition) for topic, partition in waiting]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    pending.discard((tp.topic, tp.partition))

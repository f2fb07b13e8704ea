from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from common.topic_reader import ReadStopped, ReadTimedOut, read_to_end


class _Message:
    def __init__(self, partition: int, offset: int, error: KafkaError | None = None, topic: str = "t") -> None:
        self._topic, self._partition, self._offset, self._error = topic, partition, offset, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> KafkaError | None:
        return self._error


def _record(partition: int, offset: int) -> _Message:
    return _Message(partition, offset)


def _end_of(partition: int, offset: int) -> _Message:
    return _Message(partition, offset, KafkaError(KafkaError._PARTITION_EOF))


class _Consumer:
    """Answers each consume call with the next of ``polls`` (then nothing), and ``position``
    from ``positions``."""

    def __init__(self, *polls: list[_Message], positions: dict[int, int] | None = None) -> None:
        self.polls = deque(polls)
        self.positions = positions or {}
        self.assigned: list[TopicPartition] = []

    def assign(self, assignment: list[TopicPartition]) -> None:
        self.assigned = assignment

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        return self.polls.popleft() if self.polls else []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001)) for tp in partitions]


def _offsets(batches: Any) -> list[list[tuple[int, int]]]:
    return [[(m.partition(), m.offset()) for m in batch] for batch in batches]


def test_every_partition_ends_at_its_end_of_partition_event() -> None:
    consumer = _Consumer([_record(0, 0), _end_of(0, 1), _record(1, 0)], [_record(1, 1), _end_of(1, 2)])
    assignment = [TopicPartition("t", 0, 0), TopicPartition("t", 1, 0)]
    assert _offsets(read_to_end(consumer, assignment)) == [[(0, 0), (1, 0)], [(1, 1)]]
    assert consumer.assigned == assignment


def test_an_end_of_partition_event_below_the_end_waits_for_the_open_transaction() -> None:
    # Offsets 0-1 committed, 2 in a transaction still open, 3 committed behind it (end 4).
    consumer = _Consumer([_record(0, 0), _record(0, 1), _end_of(0, 2)], [], [_record(0, 3), _end_of(0, 4)])
    batches = read_to_end(consumer, [TopicPartition("t", 0, 0)], ends={("t", 0): 4})
    assert _offsets(batches) == [[(0, 0), (0, 1)], [(0, 3)]]


def test_the_position_ends_a_partition_whose_open_transaction_was_aborted() -> None:
    # The aborted transaction delivers nothing and no second end-of-partition event.
    consumer = _Consumer([_record(0, 0), _end_of(0, 1)], positions={0: 3})
    batches = read_to_end(consumer, [TopicPartition("t", 0, 0)], ends={("t", 0): 3})
    assert _offsets(batches) == [[(0, 0)]]


def test_a_partition_short_of_its_end_times_out() -> None:
    consumer = _Consumer([_record(0, 0), _end_of(0, 1)], positions={0: 1})
    with pytest.raises(ReadTimedOut) as raised:
        list(read_to_end(consumer, [TopicPartition("t", 0, 0)], ends={("t", 0): 3}, timeout=0.2))
    assert raised.value.pending == {("t", 0)}


def test_nothing_arriving_for_the_stall_time_ends_the_read() -> None:
    with pytest.raises(ReadTimedOut):
        list(read_to_end(_Consumer(), [TopicPartition("t", 0, 0)], stall=0.2))


def test_a_stop_request_ends_the_read() -> None:
    with pytest.raises(ReadStopped):
        list(read_to_end(_Consumer(), [TopicPartition("t", 0, 0)], should_stop=lambda: True))


def test_only_the_errors_asked_for_fail_the_read() -> None:
    transport = _Message(0, -1, KafkaError(KafkaError._TRANSPORT))
    assert _offsets(read_to_end(_Consumer([transport], [_end_of(0, 0)]),
                                [TopicPartition("t", 0, 0)])) == []
    with pytest.raises(KafkaException):
        list(read_to_end(_Consumer([transport]), [TopicPartition("t", 0, 0)],
                         fail_on=lambda error: True))

"""Small helpers the integration tests share: produce, consume everything, run a
connector process, wait for a condition."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from common.serde import SingleObjectSerde

ROOT = Path(__file__).resolve().parents[2]
LAB_RESULT = "com.drdangslab.events.LabResult"


def produce(bootstrap: str, topic: str, values: Iterable[tuple[str | None, dict[str, Any] | bytes | None]],
            schema: str = LAB_RESULT) -> int:
    """Produce (key, value) pairs; dict values are Avro-encoded (single-object)."""
    serde = SingleObjectSerde()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
    count = 0
    for key, value in values:
        payload = serde.encode(topic, schema, value) if isinstance(value, dict) else value
        while True:
            try:
                producer.produce(topic, key=key, value=payload)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    assert producer.flush(30) == 0
    return count


def consume_all(bootstrap: str, topic: str, timeout: float = 20.0, read_committed: bool = True,
                expect: int | None = None) -> list[Any]:
    """Every message in ``topic`` (all partitions) from the beginning."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = list(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list[Any] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(message.partition())
                continue
            at_eof.discard(message.partition())
            messages.append(message)
        if len(at_eof) == len(partitions) and (expect is None or len(messages) >= expect):
            break
    consumer.close()
    return messages


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    result = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    consumer.close()
    return {tp.partition: tp.offset for tp in result}


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json", **env}
    log_file = open(log_path, "ab")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=log_file,
                            stderr=subprocess.STDOUT)


def start_test_connector(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return start_process(["-m", "tests.support.run_test_connector", name], env, log_path)


def start_real_connector(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A project connector as a real process (crash points: tests/support/run_real_connector.py)."""
    return start_process(["-m", "tests.support.run_real_connector", name], env, log_path)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)

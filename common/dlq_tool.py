"""`labconnect dlq show|redrive`: inspect the dead-letter queue and send records back.

``show`` prints each dead letter's context (origin topic/partition/offset, connector,
stage, exception class and scrubbed message), never its contents. ``redrive``
re-produces dead letters, byte-for-byte with their original key, headers and timestamp
(the ``__connect.errors.*`` context is dropped, a ``__labconnect.redriven.from`` header
added), to their origin topic or ``--to``, with the sources' partitioner (so a patient's
records stay on one partition).

Re-drive is exactly-once: each batch of re-produced records and the re-drive's progress
(the offsets of its consumer group, one group per ``--connector`` filter) are committed
in one Kafka transaction. An interrupted or repeated re-drive therefore never sends a
record twice and never skips one. A record it cannot re-drive (a source's raw input has no
origin topic) is counted and passed; a target topic that does not exist stops the run
before anything of that batch is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from common.config import client_properties
from common.kafka_clients import TOOL_LOG, require_reachable
from common.dlq import HEADER_PREFIX

REDRIVEN_FROM = "__labconnect.redriven.from"
BATCH = 500


class RedriveError(Exception):
    """The re-drive stopped; what was committed before stays committed."""


def _context(message: Any) -> dict[str, str]:
    return {k[len(HEADER_PREFIX):]: (v or b"").decode(errors="replace")
            for k, v in (message.headers() or []) if k.startswith(HEADER_PREFIX)}


def _read(consumer: Consumer, partitions: list[int], stall_s: float = 120.0) -> Iterator[list[Any]]:
    """Batches of messages until every partition reached its end (end-of-partition events);
    raises if nothing arrives for ``stall_s`` before that."""
    pending = set(partitions)
    deadline = time.monotonic() + stall_s
    while pending:
        if time.monotonic() > deadline:
            raise RedriveError(f"the dead-letter topic was not read to its end (nothing for {stall_s:.0f}s)")
        batch = []
        for message in consumer.consume(BATCH, timeout=1.0):
            deadline = time.monotonic() + stall_s
            error = message.error()
            if error is None:
                batch.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard(message.partition())
            elif error.fatal():
                raise KafkaException(error)
        if batch:
            yield batch


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    if metadata.error is not None:
        raise RedriveError(f"topic {topic}: {metadata.error.str()}")
    return sorted(metadata.partitions)


def show(bootstrap: str | None, topic: str, limit: int, connector: str | None) -> int:
    config = client_properties(bootstrap)
    require_reachable(config)
    consumer = Consumer({**config, "group.id": f"dlq-show-{uuid.uuid4().hex}", "logger": TOOL_LOG,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    shown = 0
    try:
        partitions = _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        for batch in _read(consumer, partitions):
            for message in batch:
                ctx = _context(message)
                if connector and ctx.get("connector.name") != connector:
                    continue
                print(f"{message.partition()}:{message.offset():<8} from {ctx.get('topic') or '-'}"
                      f"[{ctx.get('partition', '-')}]@{ctx.get('offset', '-')} "
                      f"connector={ctx.get('connector.name', '-')} stage={ctx.get('stage', '-')} "
                      f"{ctx.get('exception.class.name', '-')}: {ctx.get('exception.message', '')}")
                shown += 1
                if shown >= limit:
                    break
            if shown >= limit:
                break
    finally:
        consumer.close()
    print(f"({shown} dead letters shown)")
    return 0


class _Redrive:
    def __init__(self, bootstrap: str | None, topic: str, to: str | None, connector: str | None, group: str,
                 dry_run: bool) -> None:
        self.topic, self.to, self.connector, self.dry_run = topic, to, connector, dry_run
        kafka = {**client_properties(bootstrap), "logger": TOOL_LOG}
        require_reachable(kafka)
        self.consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False,
                                  "enable.partition.eof": True, "isolation.level": "read_committed"})
        self.producer: Producer | None = None
        if not dry_run:
            # One transactional id per group: a second run of the same re-drive fences the first.
            self.producer = Producer({**kafka, "transactional.id": f"labconnect-dlq-redrive-{group}",
                                      "partitioner": "murmur2_random", "linger.ms": 5})
            self.producer.init_transactions(30)
        self.known_topics: set[str] = set()
        self.sent = self.passed = self.filtered = 0

    def run(self) -> None:
        partitions = _partitions(self.consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        committed = self.consumer.committed(tps, timeout=30)
        self.consumer.assign([TopicPartition(self.topic, tp.partition,
                                             tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed])
        for batch in _read(self.consumer, partitions):
            self._redrive(batch)

    def _redrive(self, batch: list[Any]) -> None:
        outgoing = []
        for message in batch:
            ctx = _context(message)
            if self.connector and ctx.get("connector.name") != self.connector:
                self.filtered += 1  # another connector's: this group (one per filter) passes it
                continue
            if not ctx.get("topic"):
                self.passed += 1  # a source's raw input: nothing in Kafka to send it back to
                continue
            target = self.to or ctx["topic"]
            self._require_topic(target)
            headers = [(k, v) for k, v in (message.headers() or []) if not k.startswith(HEADER_PREFIX)]
            headers.append((REDRIVEN_FROM, f"{self.topic}/{message.partition()}/{message.offset()}".encode()))
            outgoing.append((target, message, headers))
        if self.dry_run or self.producer is None:
            self.sent += len(outgoing)
            return
        positions: dict[int, int] = {}
        for message in batch:
            positions[message.partition()] = message.offset() + 1
        producer = self.producer
        producer.begin_transaction()
        try:
            for target, message, headers in outgoing:
                kwargs: dict[str, Any] = {"key": message.key(), "value": message.value(), "headers": headers}
                timestamp_type, timestamp = message.timestamp()
                if timestamp_type != 0 and timestamp > 0:
                    kwargs["timestamp"] = timestamp
                while True:
                    try:
                        producer.produce(target, **kwargs)
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        producer.poll(0.5)
            offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(positions.items())]
            producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(120)
        except BaseException:
            try:
                producer.abort_transaction(30)
            except KafkaException:
                pass  # the error being raised is the one to report; the next run fences this one
            raise
        self.sent += len(outgoing)

    def _require_topic(self, target: str) -> None:
        if target in self.known_topics:
            return
        metadata = self.consumer.list_topics(target, timeout=10).topics.get(target)
        if metadata is None or metadata.error is not None:
            raise RedriveError(f"target topic {target} does not exist (topics are not created automatically)")
        self.known_topics.add(target)

    def close(self) -> None:
        self.consumer.close()
        if self.producer is not None:
            self.producer.flush(10)


def redrive(bootstrap: str | None, topic: str, to: str | None, connector: str | None, group: str | None,
            dry_run: bool) -> int:
    job = _Redrive(bootstrap, topic, to, connector, group or f"labconnect-dlq-redrive-{connector or 'all'}", dry_run)
    try:
        job.run()
    except (RedriveError, KafkaException) as exc:
        print(f"redrive stopped: {exc}; {job.sent} re-driven and committed before that, run it again "
              "once fixed", file=sys.stderr)
        return 1
    finally:
        job.close()
    print(f"{'would re-drive' if dry_run else 're-drove'} {job.sent} dead letters "
          f"({job.filtered} of other connectors, {job.passed} source inputs without an origin topic)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect dlq", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["show", "redrive"])
    parser.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topic", default=os.environ.get("ERRORS_DEADLETTERQUEUE_TOPIC_NAME", "dead-letter"))
    parser.add_argument("--connector", help="only dead letters of this connector")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--to", help="re-drive into this topic instead of each record's origin topic")
    parser.add_argument("--group", default=None,
                        help="consumer group that tracks progress (default: one per --connector filter)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "show":
        return show(args.bootstrap, args.topic, args.limit, args.connector)
    return redrive(args.bootstrap, args.topic, args.to, args.connector, args.group, args.dry_run)

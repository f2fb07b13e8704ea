"""`labconnect dlq show|redrive`: inspect the dead-letter queue and send records back.

``show`` prints each dead letter's context (origin topic/partition/offset, connector,
stage, exception class and scrubbed message), never its contents. ``redrive``
re-produces dead letters, byte-for-byte with their original headers (the
``__connect.errors.*`` context is dropped, a ``__labconnect.redriven.from`` header
added), to their origin topic or ``--to``. Progress is committed under a consumer
group, so a re-drive that is interrupted or run again never sends a record twice.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from common.dlq import HEADER_PREFIX


def _context(message: Any) -> dict[str, str]:
    return {k[len(HEADER_PREFIX):]: (v or b"").decode(errors="replace")
            for k, v in (message.headers() or []) if k.startswith(HEADER_PREFIX)}


def _read(consumer: Consumer, topic: str, timeout: float = 10.0) -> Iterator[Any]:
    partitions = list(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
    pending = set(partitions)
    while pending:
        messages = consumer.consume(500, timeout=timeout)
        if not messages:
            return
        for message in messages:
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            yield message


def show(bootstrap: str, topic: str, limit: int, connector: str | None) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-show-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    shown = 0
    for message in _read(consumer, topic):
        ctx = _context(message)
        if connector and ctx.get("connector.name") != connector:
            continue
        print(f"{message.partition()}:{message.offset():<8} from {ctx.get('topic') or '-'}"
              f"[{ctx.get('partition', '-')}]@{ctx.get('offset', '-')} connector={ctx.get('connector.name', '-')} "
              f"stage={ctx.get('stage', '-')} {ctx.get('exception.class.name', '-')}: {ctx.get('exception.message', '')}")
        shown += 1
        if shown >= limit:
            break
    consumer.close()
    print(f"({shown} dead letters shown)")
    return 0


def redrive(bootstrap: str, topic: str, to: str | None, connector: str | None, group: str, dry_run: bool) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = skipped = consumed = 0
    for message in _read(consumer, topic):
        consumed += 1
        ctx = _context(message)
        target = to or ctx.get("topic")
        if (connector and ctx.get("connector.name") != connector) or not target:
            skipped += 1
            continue
        headers = [(k, v) for k, v in (message.headers() or []) if not k.startswith(HEADER_PREFIX)]
        headers.append(("__labconnect.redriven.from", f"{topic}/{message.partition()}/{message.offset()}".encode()))
        if not dry_run:
            producer.produce(target, key=message.key(), value=message.value(), headers=headers,
                             timestamp=message.timestamp()[1])
        sent += 1
    if not dry_run:
        if producer.flush(60):
            raise SystemExit("redrive: not every record was acknowledged; nothing committed, run it again")
        if consumed:
            consumer.commit(asynchronous=False)  # after the flush: a crash in between re-sends, never loses
    consumer.close()
    print(f"{'would re-drive' if dry_run else 're-drove'} {sent} dead letters ({skipped} skipped)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect dlq", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["show", "redrive"])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--topic", default=os.environ.get("ERRORS_DEADLETTERQUEUE_TOPIC_NAME", "dead-letter"))
    parser.add_argument("--connector", help="only dead letters of this connector")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--to", help="re-drive into this topic instead of each record's origin topic")
    parser.add_argument("--group", default="labconnect-dlq-redrive", help="consumer group that tracks progress")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "show":
        return show(args.bootstrap, args.topic, args.limit, args.connector)
    return redrive(args.bootstrap, args.topic, args.to, args.connector, args.group, args.dry_run)

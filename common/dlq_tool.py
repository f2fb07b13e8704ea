"""`labconnect dlq list|show|redrive`: summarise the dead-letter queue, inspect it, send records back.

``list`` counts dead letters by connector, stage and exception class, with the oldest and
newest record timestamps of each (a sink's dead letter keeps its original record's
timestamp) and how many had been re-driven before and failed again. ``show`` prints each dead letter's context (origin topic/partition/offset, connector,
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

A re-drive prints its progress to stderr and warns when re-driven records fail again: a
dead letter it reads that carries ``__labconnect.redriven.from`` was re-driven before and
came back, and with ``--watch SECONDS`` it keeps reading the dead-letter queue that long
after re-driving and counts the records of this run that come straight back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from common.config import client_properties
from common.kafka_clients import TOOL_LOG, require_reachable
from common.dlq import HEADER_PREFIX
from common.topic_reader import ReadTimedOut, read_to_end

REDRIVEN_FROM = "__labconnect.redriven.from"
BATCH = 500
STALL_S = 120.0  # reading the dead-letter topic gives up when nothing arrives for this long
PROGRESS_EVERY_S = 2.0


class RedriveError(Exception):
    """The re-drive stopped; what was committed before stays committed."""


def _context(message: Any) -> dict[str, str]:
    return {k[len(HEADER_PREFIX):]: (v or b"").decode(errors="replace")
            for k, v in (message.headers() or []) if k.startswith(HEADER_PREFIX)}


def _read(consumer: Consumer, assignment: list[TopicPartition],
          ends: dict[tuple[str, int], int] | None = None) -> Iterator[list[Any]]:
    """Batches of dead letters from ``assignment`` until every partition reached its end (its
    offset in ``ends``, if given); raises if nothing arrives for STALL_S before that."""
    try:
        yield from read_to_end(consumer, assignment, ends=ends, stall=STALL_S, batch_size=BATCH)
    except ReadTimedOut:
        raise RedriveError(f"the dead-letter topic was not read to its end (nothing for {STALL_S:.0f}s)") from None


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    if metadata.error is not None:
        raise RedriveError(f"topic {topic}: {metadata.error.str()}")
    return sorted(metadata.partitions)


def _dead_letters(bootstrap: str | None, topic: str, connector: str | None) -> Iterator[tuple[Any, dict[str, str]]]:
    """Every dead letter of ``topic`` from its start (of ``connector`` only, when given), with its
    ``__connect.errors.*`` context; read by a throwaway consumer that commits nothing."""
    config = client_properties(bootstrap)
    require_reachable(config)
    consumer = Consumer({**config, "group.id": f"dlq-read-{uuid.uuid4().hex}", "logger": TOOL_LOG,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        partitions = _partitions(consumer, topic)
        for batch in _read(consumer, [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]):
            for message in batch:
                ctx = _context(message)
                if connector and ctx.get("connector.name") != connector:
                    continue
                yield message, ctx
    finally:
        consumer.close()


def show(bootstrap: str | None, topic: str, limit: int, connector: str | None) -> int:
    shown = 0
    for message, ctx in _dead_letters(bootstrap, topic, connector):
        if shown >= limit:
            break
        print(f"{message.partition()}:{message.offset():<8} from {ctx.get('topic') or '-'}"
              f"[{ctx.get('partition', '-')}]@{ctx.get('offset', '-')} "
              f"connector={ctx.get('connector.name', '-')} stage={ctx.get('stage', '-')} "
              f"{ctx.get('exception.class.name', '-')}: {ctx.get('exception.message', '')}")
        shown += 1
    print(f"({shown} dead letters shown)")
    return 0


@dataclass
class DeadLetterGroup:
    """Dead letters of one connector, stage and exception class."""

    connector: str
    stage: str
    error_class: str
    count: int = 0
    came_back: int = 0  # re-driven before, and dead-lettered again
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, timestamp_ms: int | None, redriven: bool) -> None:
        self.count += 1
        self.came_back += redriven
        if timestamp_ms is not None and timestamp_ms > 0:
            self.oldest_ms = timestamp_ms if self.oldest_ms is None else min(self.oldest_ms, timestamp_ms)
            self.newest_ms = timestamp_ms if self.newest_ms is None else max(self.newest_ms, timestamp_ms)


def summarise(bootstrap: str | None, topic: str, connector: str | None = None) -> list[DeadLetterGroup]:
    """Every dead letter of ``topic`` (of ``connector`` only, when given), grouped."""
    groups: dict[tuple[str, str, str], DeadLetterGroup] = {}
    for message, ctx in _dead_letters(bootstrap, topic, connector):
        key = (ctx.get("connector.name") or "-", ctx.get("stage") or "-", ctx.get("exception.class.name") or "-")
        group = groups.get(key) or groups.setdefault(key, DeadLetterGroup(*key))
        group.add(message.timestamp()[1], _redriven_from(message) is not None)
    return sorted(groups.values(), key=lambda g: (g.connector, g.stage, -g.count))


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_dead_letters(bootstrap: str | None, topic: str, connector: str | None, as_json: bool) -> int:
    groups = summarise(bootstrap, topic, connector)
    if as_json:
        print(json.dumps([{**vars(g), "oldest": _iso(g.oldest_ms), "newest": _iso(g.newest_ms)} for g in groups],
                         indent=2))
        return 0
    print(f"{'CONNECTOR':<24} {'STAGE':<16} {'COUNT':>7} {'CAME BACK':>9} {'OLDEST':<20} {'NEWEST':<20} ERROR CLASS")
    for g in groups:
        print(f"{g.connector:<24} {g.stage:<16} {g.count:>7} {g.came_back:>9} {_iso(g.oldest_ms):<20} "
              f"{_iso(g.newest_ms):<20} {g.error_class}")
    print(f"({sum(g.count for g in groups)} dead letters in {topic}"
          f"{', of ' + connector if connector else ''}; CAME BACK: re-driven before and dead-lettered again)")
    return 0


def _redriven_from(message: Any) -> str | None:
    for key, value in reversed(message.headers() or []):
        if key == REDRIVEN_FROM:
            return (value or b"").decode(errors="replace")
    return None


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
        self.sent = self.passed = self.filtered = self.read = self.total = 0
        self.came_back: list[str] = []  # origins of dead letters that had been re-driven before
        self.redriven: set[str] = set()  # REDRIVEN_FROM values this run sent
        self.came_back_early = 0  # of those, read back past the ends while the run still read
        self._progress_at = time.monotonic()

    def run(self) -> None:
        partitions = _partitions(self.consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        committed = self.consumer.committed(tps, timeout=30)
        # The queue as it stands now: a record re-driven by this run that fails again lands
        # behind these ends, and is left for the next re-drive (and counted by watch()).
        ends: dict[tuple[str, int], int] = {}
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=30)
            self.total += max(0, high - max(low, tp.offset))
            ends[(self.topic, tp.partition)] = high
        print(f"redrive: {self.total} dead letters to read in {self.topic} (all connectors') since the last "
              "re-drive", file=sys.stderr, flush=True)
        since_last_redrive = [TopicPartition(self.topic, tp.partition,
                                             tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed]
        for batch in _read(self.consumer, since_last_redrive, ends):
            before_ends = [m for m in batch if m.offset() < ends[(self.topic, m.partition())]]
            self.came_back_early += sum(1 for m in batch if m.offset() >= ends[(self.topic, m.partition())]
                                        and _redriven_from(m) in self.redriven)
            if before_ends:
                self._redrive(before_ends)
            self.read += len(before_ends)
            if time.monotonic() - self._progress_at >= PROGRESS_EVERY_S:
                self._progress_at = time.monotonic()
                print(f"redrive: {self.read} of about {self.total} dead letters read, {self.sent} re-driven",
                      file=sys.stderr, flush=True)

    def watch(self, seconds: float) -> int:
        """Read what reaches the dead-letter queue for ``seconds``; how many of this run's
        re-driven records came back."""
        back = self.came_back_early
        deadline = time.monotonic() + seconds
        while self.redriven and time.monotonic() < deadline:
            for message in self.consumer.consume(BATCH, timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                if message.error() is None and _redriven_from(message) in self.redriven:
                    back += 1
            if back >= len(self.redriven):  # every one came back: nothing left to wait for
                break
        return back

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
            if _redriven_from(message) is not None:
                self.came_back.append(f"{ctx['topic']}[{ctx.get('partition', '-')}]@{ctx.get('offset', '-')}")
            # The context of this failure is dropped, and so is an earlier re-drive's mark: one origin each.
            headers = [(k, v) for k, v in (message.headers() or [])
                       if not k.startswith(HEADER_PREFIX) and k != REDRIVEN_FROM]
            origin = f"{self.topic}/{message.partition()}/{message.offset()}"
            headers.append((REDRIVEN_FROM, origin.encode()))
            outgoing.append((target, message, headers))
            if not self.dry_run:
                self.redriven.add(origin)
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
            dry_run: bool, watch_s: float = 0.0) -> int:
    job = _Redrive(bootstrap, topic, to, connector, group or f"labconnect-dlq-redrive-{connector or 'all'}", dry_run)
    try:
        job.run()
        back = job.watch(watch_s) if watch_s > 0 else 0
    except (RedriveError, KafkaException) as exc:
        print(f"redrive stopped: {exc}; {job.sent} re-driven and committed before that, run it again "
              "once fixed", file=sys.stderr)
        return 1
    finally:
        job.close()
    print(f"{'would re-drive' if dry_run else 're-drove'} {job.sent} dead letters "
          f"({job.filtered} of other connectors, {job.passed} source inputs without an origin topic)")
    if job.came_back:
        print(f"warning: {len(job.came_back)} of these had been re-driven before and were dead-lettered again "
              f"(first: {', '.join(job.came_back[:3])}): is the cause fixed?", file=sys.stderr)
    if back:
        print(f"warning: {back} of the {job.sent} re-driven records came straight back to {topic} within "
              f"{watch_s:.0f}s: the cause is not fixed", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="labconnect dlq", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "show", "redrive"])
    parser.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topic", default=os.environ.get("ERRORS_DEADLETTERQUEUE_TOPIC_NAME", "dead-letter"))
    parser.add_argument("--connector", help="only dead letters of this connector")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--to", help="re-drive into this topic instead of each record's origin topic")
    parser.add_argument("--group", default=None,
                        help="consumer group that tracks progress (default: one per --connector filter)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="redrive: read the DLQ this long after re-driving and warn about records that come back")
    parser.add_argument("--json", action="store_true", help="list: as JSON")
    args = parser.parse_args(argv)
    if args.action == "list":
        return list_dead_letters(args.bootstrap, args.topic, args.connector, args.json)
    if args.action == "show":
        return show(args.bootstrap, args.topic, args.limit, args.connector)
    return redrive(args.bootstrap, args.topic, args.to, args.connector, args.group, args.dry_run, args.watch)

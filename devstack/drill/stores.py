"""What the stores hold, read from the stores themselves: the warehouse's Parquet objects in S3
(DuckDB), the billing ledger in PostgreSQL, the notify ledger and the provider's accepted
messages, the dead-letter queue and how far each sink has read."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from devstack.drill.stack import BUCKET, Stack


@dataclass(frozen=True)
class WarehouseRows:
    live: Counter[str]  # event_id -> rows of records the live connectors wrote
    replayed: Counter[str]  # event_id -> rows of records a replay wrote (header replay: true)


class WarehouseReader:
    """Downloads the lake from moto (not through the fault proxy), each object once per ETag."""

    def __init__(self, stack: Stack, target: Path) -> None:
        self.client = stack.s3_client()
        self.target = target
        self.etags: dict[str, str] = {}

    def rows(self) -> WarehouseRows:
        import duckdb

        present = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="lake/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith(".parquet"):
                    continue
                present.add(key)
                if self.etags.get(key) != item["ETag"]:
                    path = self.target / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(BUCKET, key, str(path))
                    self.etags[key] = item["ETag"]
        for key in set(self.etags) - present:
            (self.target / key).unlink(missing_ok=True)
            del self.etags[key]
        if not present:
            return WarehouseRows(Counter(), Counter())
        rows = duckdb.sql(
            f"SELECT event_id, list_contains(list_transform(_kafka_headers, h -> h.key), 'replay') AS replay, "
            f"count(*) FROM read_parquet('{self.target}/lake/**/*.parquet', hive_partitioning=true, "
            f"union_by_name=true) GROUP BY ALL").fetchall()
        live: Counter[str] = Counter()
        replayed: Counter[str] = Counter()
        for event_id, replay, n in rows:
            (replayed if replay else live)[event_id] += n
        return WarehouseRows(live, replayed)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {})
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def billing_ledger(stack: Stack) -> list[tuple[Any, ...]]:
    """Every ledger row: (source_system, accession, test_code, entry_type, amount, event_id)."""
    try:
        return _query(stack.postgres.url, "SELECT source_system, accession, test_code, entry_type, amount, event_id "
                                          "FROM billing_ledger ORDER BY 1, 2, 3, 4, 6")
    except sa.exc.SQLAlchemyError:
        return []  # not migrated yet, or PostgreSQL is down


@dataclass(frozen=True)
class NotifyMessage:
    key: str
    audience: str
    kind: str
    state: str
    accessions: tuple[tuple[str, str], ...]


def notify_messages(stack: Stack) -> list[NotifyMessage]:
    try:
        rows = _query(stack.notify_url, "SELECT message_key, audience, kind, state, accessions FROM notify_messages")
    except sa.exc.SQLAlchemyError:
        return []
    return [NotifyMessage(key, audience, kind, state, tuple(tuple(a) for a in json.loads(accessions)))
            for key, audience, kind, state, accessions in rows]


def provider_messages(stack: Stack) -> list[dict[str, Any]]:
    """What the provider accepted (a repeated idempotency key is answered, not stored again)."""
    return stack.providers.messages()


def sink_offsets(stack: Stack) -> dict[str, dict[tuple[str, int], int]]:
    """Next offset per (topic, partition) each sink has made durable."""
    from confluent_kafka import Consumer, TopicPartition

    out: dict[str, dict[tuple[str, int], int]] = {}
    for sink, url, table in (("sink-billing", stack.postgres.url, "billing_kafka_offsets"),
                             ("sink-notify", stack.notify_url, "notify_kafka_offsets")):
        try:
            out[sink] = {(t, p): o for t, p, o in _query(url, f"SELECT topic, kafka_partition, next_offset FROM {table}")}
        except sa.exc.SQLAlchemyError:
            out[sink] = {}
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "connect-sink-warehouse"})
    try:
        partitions = consumer.list_topics("lab-results", timeout=10).topics["lab-results"].partitions
        committed = consumer.committed([TopicPartition("lab-results", p) for p in partitions], timeout=10)
        out["sink-warehouse"] = {("lab-results", tp.partition): tp.offset for tp in committed}
    finally:
        consumer.close()
    return out


@dataclass
class TopicContents:
    """The committed records of the drill's topics, read to their end."""

    ends: dict[tuple[str, int], int]  # offset after the last visible record
    dead_letters: list[tuple[bytes | None, bytes | None]]
    counts: Counter[str]
    replayed: Counter[str]


def read_topics(stack: Stack, topics: tuple[str, ...] = ("lab-results", "lab-reports", "patients", "dead-letter"),
                timeout: float = 60.0) -> TopicContents:
    from confluent_kafka import Consumer, TopicPartition

    from common.topic_reader import ReadTimedOut, read_to_end

    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"drill-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    contents = TopicContents({}, [], Counter(), Counter())
    try:
        assignment = [TopicPartition(t, p, 0) for t in topics
                      for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        try:
            for batch in read_to_end(consumer, assignment, timeout=timeout):
                for message in batch:
                    contents.ends[(message.topic(), message.partition())] = message.offset() + 1
                    contents.counts[message.topic()] += 1
                    if any(k == "replay" for k, _ in message.headers() or []):
                        contents.replayed[message.topic()] += 1
                    if message.topic() == "dead-letter":
                        contents.dead_letters.append((message.key(), message.value()))
        except ReadTimedOut:
            raise TimeoutError(f"the topics were not read to their end in {timeout:.0f}s") from None
    finally:
        consumer.close()
    return contents


def caught_up(stack: Stack, ends: dict[tuple[str, int], int]) -> bool:
    """Whether every sink has made durable everything up to ``ends`` on the topics it reads."""
    reads = {"sink-billing": ("lab-reports",), "sink-notify": ("lab-reports", "patients"),
             "sink-warehouse": ("lab-results",)}
    offsets = sink_offsets(stack)
    return all(offsets[sink].get(where, 0) >= end for sink, topics in reads.items()
               for where, end in ends.items() if where[0] in topics)

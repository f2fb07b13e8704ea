"""What `labconnect offsets` needs from a connector to read and move where it resumes.

A sink resumes from its consumer group's committed offsets, unless its task keeps its own
(``SinkTask.open`` returns them: billing and the notify ledger store them in the same
database transaction as their rows). Such a sink declares a :class:`SinkOffsetStore`, so a
reset moves both. A source resumes from its source offsets on the offsets topic; what a
reset means for one of its source partitions is the connector's to say
(:class:`SourceOffsetRules`): a FHIR cursor can be moved to a time, an HL7 sender's
duplicate window cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from common.errors import ConnectorError, scrub
from common.task import TopicPartition


@dataclass(frozen=True)
class ResetTarget:
    """Where a reset moves to: the earliest or latest position, or a point in time (epoch ms)."""

    kind: Literal["earliest", "latest", "datetime"]
    at_ms: int | None = None

    def describe(self) -> str:
        if self.kind != "datetime" or self.at_ms is None:
            return self.kind
        return datetime.fromtimestamp(self.at_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SourceOffsetChange:
    """A source partition's new offset: ``offset`` (None: removed, the task starts as if new),
    or ``keep`` with ``note`` saying why the partition has no position to move."""

    offset: dict[str, Any] | None
    keep: bool = False
    note: str = ""


class SourceOffsetRules(Protocol):
    """What a reset means for a source connector's source partitions."""

    def known_partitions(self) -> list[dict[str, Any]]:
        """Partitions the configuration implies, so a reset applies before the first commit too."""

    def describe(self, partition: Mapping[str, Any], offset: Mapping[str, Any]) -> str:
        """One line an operator reads (no PHI: the offset may hold source identifiers)."""

    def reset(self, partition: Mapping[str, Any], offset: Mapping[str, Any] | None,
              target: ResetTarget) -> SourceOffsetChange:
        """The partition's offset after a reset to ``target``."""


class SinkOffsetStore(Protocol):
    """Offsets a sink task keeps in its own system, next offset per topic partition."""

    def read(self, topics: list[str]) -> dict[TopicPartition, int]:
        """Stored next offsets of ``topics`` (partitions without a row are absent)."""

    def write(self, offsets: dict[TopicPartition, int]) -> None:
        """Store ``offsets`` in one transaction (rows not named are left as they are)."""

    def close(self) -> None:
        """Release the connection pool."""


class SqlOffsetStore:
    """A sink's offsets table (``topic``, ``kafka_partition``, ``next_offset``, ``updated_at``)."""

    def __init__(self, engine: Engine, table: Table, now: Callable[[], Any], what: str) -> None:
        """``now``: the value ``updated_at`` takes; ``what``: the table's owner, named in errors."""
        self.engine = engine
        self.table = table
        self.now = now
        self.what = what

    def read(self, topics: list[str]) -> dict[TopicPartition, int]:
        c = self.table.c
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(c.topic, c.kafka_partition, c.next_offset)
                                    .where(c.topic.in_(sorted(set(topics))))).all()
        except SQLAlchemyError as exc:
            raise ConnectorError(f"{self.what}: reading stored offsets failed: {scrub(str(exc)).splitlines()[0]}") \
                from None
        return {(row.topic, row.kafka_partition): row.next_offset for row in rows}

    def write(self, offsets: dict[TopicPartition, int]) -> None:
        c = self.table.c
        now = self.now()
        try:
            with self.engine.begin() as conn:
                for (topic, partition), offset in sorted(offsets.items()):
                    where = (c.topic == topic) & (c.kafka_partition == partition)
                    moved = conn.execute(update(self.table).where(where).values(next_offset=offset, updated_at=now))
                    if not moved.rowcount:
                        conn.execute(insert(self.table).values(topic=topic, kafka_partition=partition,
                                                               next_offset=offset, updated_at=now))
        except SQLAlchemyError as exc:
            raise ConnectorError(f"{self.what}: storing offsets failed: {scrub(str(exc)).splitlines()[0]}") \
                from None

    def close(self) -> None:
        self.engine.dispose()

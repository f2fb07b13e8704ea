"""The records that flow between the runtime and a connector's task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A record a source task wants written to Kafka.

    ``value`` is a plain dict matching the Avro schema named by ``schema`` (the
    schema's full name, e.g. ``com.drdangslab.events.LabResult``); the runtime
    serializes it. ``source_partition``/``source_offset`` say where in the source
    this record came from; the runtime commits the offset of the last record of
    a batch in the same Kafka transaction as the records.
    """

    topic: str
    key: str | None
    value: dict[str, Any] | None
    schema: str
    source_partition: dict[str, Any]
    source_offset: dict[str, Any]
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3x on the sink hot path
class SinkRecord:
    """A record consumed from Kafka, decoded, handed to a sink task.

    ``raw_key``/``raw_value`` keep the exact bytes (the dead-letter queue re-sends
    them byte-for-byte); ``value`` is the Avro value, resolved to the sink's reader
    schema for the topic if it declares one, else as written (None for a task with
    ``raw_values``, which decodes ``raw_value`` itself). ``schema`` names the
    writer schema (``fp:<hex fingerprint>`` or ``id:<registry id>``); resolve it with
    ``context.writer_schema``.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: dict[str, Any] | None
    raw_key: bytes | None
    raw_value: bytes | None
    headers: Headers
    schema: str | None = None

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Raw input a source task could not turn into records (malformed HL7, bad JSON).

    The runtime writes it to the dead-letter queue in the same transaction as the
    batch it came with, so the bad input is never lost and never blocks the rest.
    A dead letter may carry the source offset reached with it: a batch of nothing but
    bad input then still moves the source forward, and a restart does not re-read it.
    """

    payload: bytes
    error: BaseException
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    stage: str = "TASK_POLL"
    source_partition: dict[str, Any] | None = None
    source_offset: dict[str, Any] | None = None

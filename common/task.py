"""The two task contracts a connector implements; everything else is the runtime's.

A source task turns an external system into :class:`SourceRecord` batches. The
runtime writes each batch and the batch's source offsets in one Kafka transaction,
then calls :meth:`SourceTask.on_committed` (an HL7 listener sends its ACKs there).
The next ``poll`` runs while a transaction commits, before that batch's
``on_committed``/``on_aborted``: a task keeps what it read since its last committed
batch, and reports arrive oldest first.

A sink task receives decoded :class:`SinkRecord` batches in :meth:`SinkTask.put`
and makes everything it was given durable in :meth:`SinkTask.flush`; only after
``flush`` returns does the runtime commit the consumer offsets. If ``put`` or
``flush`` raises, the runtime calls :meth:`SinkTask.abort` (drop what was buffered
since the last successful flush), then retries or splits the batch to isolate a
poison record, so both must be safe to call again with the same records.

A sink that stores its consumed offsets itself (in the same database transaction
as its rows) returns them from :meth:`SinkTask.open`; the runtime then seeks
there instead of trusting the consumer group. Such a sink may also finish a
flush's write in the background while the next batch is read (Kafka Connect's
``preCommit``): it then answers :meth:`SinkTask.pre_commit` with only the offsets
already durable, and when a background write fails it calls
:meth:`SinkTaskContext.rewind` and raises; the runtime drops the batch it holds
and resumes from the offsets ``open`` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from common.records import DeadLetter, SinkRecord, SourceRecord

TopicPartition = tuple[str, int]


class SourceTaskContext(Protocol):
    connector_name: str
    task_id: int

    def offset(self, partition: dict[str, Any]) -> dict[str, Any] | None:
        """The last committed source offset for a source partition, or None."""


class SourceTask(ABC):
    def start(self, context: SourceTaskContext) -> None:
        """Called once before the first poll."""
        self.context = context

    @abstractmethod
    def poll(self) -> Sequence[SourceRecord | DeadLetter]:
        """Return the next batch (possibly empty; block at most about a second)."""

    def on_committed(self, batch: Sequence[SourceRecord | DeadLetter]) -> None:
        """The batch and its offsets are committed to Kafka."""

    def on_aborted(self, batch: Sequence[SourceRecord | DeadLetter], error: BaseException) -> None:
        """The batch could not be committed; it will not be retried by the runtime."""

    def on_record_failed(self, record: SourceRecord, error: BaseException) -> None:
        """The runtime dead-lettered ``record`` (it could not be serialized); called while
        the batch is being written, before its offsets and its commit. A source that
        acknowledges its input (HL7) answers that input with an error, not a success."""

    def done(self) -> bool:
        """True when a bounded task (a replay window) has produced everything."""
        return False

    def wake(self) -> None:
        """Called from another thread when the previous batch's commit returned: a poll()
        waiting for input should return soon (what it has, or nothing), so that the commit
        is reported (an HL7 listener's ACKs) without waiting for more input."""

    def stop(self) -> None:
        """Release resources; called once, also after a failure."""


class SinkTaskContext(Protocol):
    connector_name: str
    task_id: int
    #: True when :meth:`rewind` is available (a task may then write in the background).
    can_rewind: bool

    def writer_schema(self, schema_ref: str) -> dict[str, Any]:
        """The parsed Avro schema a record was written with (``SinkRecord.schema``)."""

    def decode(self, raw_value: bytes) -> dict[str, Any]:
        """Decode one value the way the runtime would (for tasks with ``raw_values``);
        raises SerializationError for a corrupt value."""

    def report(self, record: SinkRecord, error: BaseException, stage: str = "TASK_PUT") -> None:
        """Send one bad record to the dead-letter queue and go on with the rest of the batch
        (Kafka Connect's ErrantRecordReporter); its offset is committed with the batch.
        Raises TaskFailed when errors.tolerance is none."""

    def rewind(self) -> None:
        """Ask the runtime to resume from the task's stored offsets (``open`` is called again)
        once the current ``put``/``flush``/``pre_commit`` raises: the batch it holds is dropped
        and everything after the stored offsets is delivered again (Kafka Connect's
        ``SinkTaskContext.offset``)."""


class SinkTask(ABC):
    #: True: the runtime checks each value's framing and writer schema but does not decode it;
    #: ``SinkRecord.value`` stays None and the task decodes ``raw_value`` itself (in bulk, say),
    #: like a Kafka Connect sink configured with the ByteArrayConverter.
    raw_values: bool = False

    def start(self, context: SinkTaskContext) -> None:
        """Called once before the first batch."""
        self.context = context

    def open(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        """Partitions were assigned. Return {partition: next offset} to resume there,
        or None to resume from the consumer group's committed offsets."""
        return None

    @abstractmethod
    def put(self, records: Sequence[SinkRecord]) -> None:
        """Process or buffer a batch of records."""

    @abstractmethod
    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        """Make every record given to ``put`` durable. ``offsets`` are the next
        offsets to consume per partition once this flush succeeds."""

    def pre_commit(self, offsets: dict[TopicPartition, int], wait: bool = False) -> dict[TopicPartition, int]:
        """The offsets the runtime may commit to the consumer group now (after a flush, or with
        ``offsets`` empty when the consumer is idle or partitions are about to be revoked).
        A task that writes in the background returns only what is durable; ``wait`` asks it to
        finish the write in flight first."""
        return offsets

    def abort(self) -> None:
        """Forget whatever ``put`` buffered since the last successful flush."""

    def close(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were revoked (after a final flush and commit)."""

    def stop(self) -> None:
        """Release resources; called once, also after a failure."""

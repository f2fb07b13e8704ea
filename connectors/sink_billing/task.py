"""BillingSinkTask: LabReport events into the billing database, exactly once.

``put`` only parses and buffers; ``flush`` hands the buffer and the offsets to
the ChargeWriter, which commits both in one transaction. ``open`` returns the
offsets stored there, so after a crash the runtime resumes exactly after the
last committed flush (the database, not the consumer group, is the truth).

On PostgreSQL, under a runtime that can rewind a task, flushes go through the
ChargePipeline: the transaction commits on a thread while the next batch is
read and folded, and ``pre_commit`` lets the runtime commit only the offsets the
database already holds. Elsewhere every flush commits before it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from common import PermanentError, SinkRecord, SinkTask, SinkTaskContext, TopicPartition
from connectors.sink_billing.bulk import bulk_upsert
from connectors.sink_billing.events import BillingEvent, billing_event
from connectors.sink_billing.pipeline import ChargePipeline
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.schema import make_engine, migrate_or_retry, require_current_schema
from connectors.sink_billing.settings import BillingSettings
from connectors.sink_billing.writer import ChargeWriter

log = logging.getLogger(__name__)


class BillingSinkTask(SinkTask):
    def __init__(self, settings: BillingSettings, engine: Engine | None = None) -> None:
        """``engine`` replaces the one built from BILLING_DATABASE_URL (tests)."""
        self.settings = settings
        self._engine = engine
        self._writer: ChargeWriter | None = None
        self._pipeline: ChargePipeline | None = None
        self._buffer: list[BillingEvent] = []

    def start(self, context: SinkTaskContext) -> None:
        super().start(context)
        prices = load_price_list(self.settings.billing_price_list)
        engine = self._engine or make_engine(self.settings.billing_database_url)
        self._engine = engine
        if self.settings.billing_migrate_on_start:
            migrate_or_retry(engine)
        require_current_schema(engine)
        method = self.settings.billing_write_method if engine.dialect.name == "postgresql" else "multirow"
        self._writer = ChargeWriter(engine, ChargeRules(prices), bulk_upsert(method))
        if engine.dialect.name == "postgresql" and getattr(context, "can_rewind", False):
            self._pipeline = ChargePipeline(self._writer, context.rewind, self.settings.billing_state_cache_max_keys)
        log.info("billing sink started", extra={"prices": len(prices), "dialect": engine.dialect.name,
                                                "write_method": method, "pipelined": self._pipeline is not None})

    @property
    def writer(self) -> ChargeWriter:
        if self._writer is None:
            raise RuntimeError("BillingSinkTask.start() was not called")
        return self._writer

    @property
    def cached_bill_keys(self) -> int:
        """Charge states held in memory between batches (0 without the pipeline)."""
        return self._pipeline.cached_bill_keys if self._pipeline is not None else 0

    def open(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        if self._pipeline is not None:  # assigned anew, or rewound: what was known may be stale
            self._pipeline.finish()
            self._pipeline.drop(partitions)
        stored = self.writer.stored_offsets(partitions)
        log.info("resuming from stored offsets", extra={"stored": len(stored), "assigned": len(partitions)})
        return stored or None

    def put(self, records: Sequence[SinkRecord]) -> None:
        parsed = []
        for record in records:
            try:
                event = billing_event(record)
            except PermanentError as exc:  # not a usable LabReport: to the DLQ, the batch goes on
                self.context.report(record, exc)
                continue
            if event.is_billing_relevant:
                parsed.append(event)
        self._buffer.extend(parsed)  # all or nothing per put: a failed put buffers none of its records

    def flush(self, offsets: dict[TopicPartition, int]) -> None:
        if not self._buffer and not offsets:
            return
        if self._pipeline is not None:
            outcome = self._pipeline.flush(self._buffer, offsets)
        else:
            outcome = self.writer.write(self._buffer, offsets)
        log.debug("billing flush committed", extra={"events": len(self._buffer), "charges": len(outcome.charges),
                                                    "ledger": len(outcome.ledger), "unpriced": len(outcome.unpriced)})
        self._buffer = []

    def pre_commit(self, offsets: dict[TopicPartition, int], wait: bool = False) -> dict[TopicPartition, int]:
        if self._pipeline is None:
            return offsets
        return self._pipeline.durable_offsets(wait)

    def abort(self) -> None:
        self._buffer = []

    def close(self, partitions: Sequence[TopicPartition]) -> None:
        if self._pipeline is not None:
            self._pipeline.finish()
            self._pipeline.drop(partitions)

    def stop(self) -> None:
        self._buffer = []
        if self._pipeline is not None:
            self._pipeline.close()
        if self._engine is not None:
            self._engine.dispose()


def make_task(settings: BillingSettings) -> BillingSinkTask:
    if not isinstance(settings, BillingSettings):
        raise PermanentError("sink-billing needs BillingSettings")
    return BillingSinkTask(settings)

"""LabReport SinkRecords for the billing sink's tests (unit and integration)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from common.records import SinkRecord
from connectors.sink_billing.events import BillKey
from connectors.sink_billing.rules import ChargeState
from connectors.sink_billing.settings import BillingSettings
from connectors.sink_billing.bulk import BulkUpsert
from connectors.sink_billing.price_list import load_price_list
from connectors.sink_billing.rules import ChargeRules
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST
from connectors.sink_billing.task import BillingSinkTask
from connectors.sink_billing.writer import ChargeWriter

TOPIC = "lab-reports"
JAN_2026_MS = 1_767_225_600_000  # 2026-01-01T00:00Z: the example price list has 2345-7 at 9.00 USD
GLUCOSE = "2345-7"
UNPRICED = "99999-9"


@dataclass
class FakeContext:
    connector_name: str = "sink-billing"
    task_id: int = 0

    reported: list[tuple[int, str]] = field(default_factory=list)  # (offset, message) dead-lettered by the task

    def writer_schema(self, schema_ref: str) -> dict[str, Any]:
        raise AssertionError("the billing sink does not resolve writer schemas")

    def report(self, record: SinkRecord, error: BaseException, stage: str = "TASK_PUT") -> None:
        self.reported.append((record.offset, str(error)))


@dataclass
class ReportStream:
    """Consecutive Kafka records of one partition: ``stream.report("final", version=2)``."""

    topic: str = TOPIC
    partition: int = 0
    next_offset: int = 0
    records: list[SinkRecord] = field(default_factory=list)

    def report(self, status: str, *, accession: str = "ACC1", test_code: str = GLUCOSE, version: int = 1,
               source_system: str = "LIS-A", timestamp_ms: int = JAN_2026_MS, **extra: Any) -> SinkRecord:
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source_system}|{accession}|{test_code}|{status}|{version}"))
        value = {
            "event_id": event_id, "event_type": "REPORT_" + status.upper().replace("-", "_"),
            "timestamp": timestamp_ms + self.next_offset, "version": version, "patient_id": "P-0001",
            "accession": accession, "test_code": test_code, "test_name": "Glucose", "report_status": status,
            "result_count": 1, "critical": False, "ordering_provider_id": None, "observed_time": None,
            "source_system": source_system, "source_message_id": f"MSG-{self.next_offset}", "metadata": {},
            **extra,
        }
        record = SinkRecord(self.topic, self.partition, self.next_offset, timestamp_ms, "P-0001", value,
                            b"P-0001", b"<avro>", [])
        self.next_offset += 1
        self.records.append(record)
        return record

    def positions(self, records: Sequence[SinkRecord] | None = None) -> dict[tuple[str, int], int]:
        """Next offsets after ``records`` (default: everything produced so far)."""
        chosen = self.records if records is None else records
        return {(r.topic, r.partition): r.offset + 1 for r in chosen}


def start_task(database_url: str, **settings: Any) -> BillingSinkTask:
    task = BillingSinkTask(BillingSettings(billing_database_url=database_url, **settings))
    task.start(FakeContext())
    return task


def deliver(task: BillingSinkTask, records: Sequence[SinkRecord], offsets: dict[tuple[str, int], int]) -> None:
    """What the runtime does with one batch: put, flush, and abort if either fails."""
    try:
        task.put(records)
        task.flush(offsets)
    except BaseException:
        task.abort()
        raise


class StaleFirstRead(ChargeWriter):
    """A task whose first read of the charges ran before another task committed the same bill key
    (the bill key's events on two partitions, e.g. after re-keying a topic)."""

    stale_reads = 1

    def _load_states(self, conn: Connection, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        if self.stale_reads:
            self.stale_reads -= 1
            return {}
        return super()._load_states(conn, keys)


class CommitsAfterRead(ChargeWriter):
    """A task whose flush reads the charges, then another task commits (``meanwhile``), then this flush
    writes what it decided: one bill key's events on two partitions, interleaved on the real database."""

    def __init__(self, engine: Engine, meanwhile: Callable[[], object], upsert: BulkUpsert | None = None) -> None:
        super().__init__(engine, ChargeRules(load_price_list(EXAMPLE_PRICE_LIST)), upsert)
        self.meanwhile: Callable[[], object] | None = meanwhile

    def _load_states(self, conn: Connection, keys: set[BillKey]) -> dict[BillKey, ChargeState]:
        states = super()._load_states(conn, keys)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return states

"""The part of a LabReport event that billing needs, with where it came from.

Only identifiers are kept (no patient id, no test name, no results): billing
rows and error messages must stay free of PHI.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, NamedTuple

from common import PermanentError, SinkRecord
from common.millis import utc_from_millis

# FHIR DiagnosticReport.status values that mean "the result is out": the first one bills.
CHARGING_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
# Corrections of a released result: never a new charge.
CORRECTING_STATUSES = CHARGING_STATUSES - {"final"}
# Retractions: after a charge they produce a reversal.
REVERSING_STATUSES = frozenset({"cancelled", "entered-in-error"})
KNOWN_STATUSES = CHARGING_STATUSES | REVERSING_STATUSES | {"registered", "partial", "preliminary"}

# A NamedTuple from a tuple of all its fields in declaration order, without the generated
# __new__ (keyword arguments there cost four times as much): for what is built per event.
new_tuple = tuple.__new__


class BillKey(NamedTuple):
    """Bill once per ordered test."""

    source_system: str
    accession: str
    test_code: str


class BillingEvent(NamedTuple):
    key: BillKey
    event_id: str
    report_status: str
    version: int
    event_time: datetime  # when the status changed at the LIS (UTC)
    source_message_id: str
    topic: str
    partition: int
    offset: int

    @property
    def service_date(self) -> date:
        """The date prices are looked up for (UTC)."""
        return self.event_time.date()

    @property
    def is_billing_relevant(self) -> bool:
        return self.report_status in CHARGING_STATUSES or self.report_status in REVERSING_STATUSES


def billing_event(record: SinkRecord) -> BillingEvent:
    """Extract a BillingEvent; a record that is not a usable LabReport is a PermanentError."""
    value: dict[str, Any] | None = record.value
    if value is None:
        raise PermanentError(f"record {_where(record)} has no value (tombstone); expected a LabReport")
    try:
        status = str(value["report_status"]).strip().lower()
        key = new_tuple(BillKey, (str(value["source_system"]), str(value["accession"]), str(value["test_code"])))
        event = new_tuple(BillingEvent, (
            key, str(value["event_id"]), status, int(value.get("version", 1)),
            utc_from_millis(int(value["timestamp"])), str(value["source_message_id"]),
            record.topic, record.partition, record.offset,
        ))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        # The exception text could echo a value; name only the field/exception type.
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise PermanentError(f"record {_where(record)} is not a usable LabReport ({detail})") from None
    if status not in KNOWN_STATUSES:
        raise PermanentError(f"record {_where(record)} (event {event.event_id}) has an unknown report_status")
    return event


def _where(record: SinkRecord) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"

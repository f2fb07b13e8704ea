from __future__ import annotations

from dataclasses import replace

import pytest

from common.errors import PermanentError
from connectors.sink_billing.events import BillKey, billing_event
from tests.unit.sink_billing.billing_records import GLUCOSE, ReportStream


def test_event_keeps_identifiers_and_kafka_position_only() -> None:
    stream = ReportStream(partition=3, next_offset=41)
    event = billing_event(stream.report("final", accession="ACC9", version=2))
    assert event.key == BillKey("LIS-A", "ACC9", GLUCOSE)
    assert (event.topic, event.partition, event.offset, event.version) == ("lab-reports", 3, 41, 2)
    assert event.source_message_id == "MSG-41" and event.service_date.isoformat() == "2026-01-01"
    assert not hasattr(event, "patient_id")


def test_status_is_normalised_and_non_billing_statuses_are_not_relevant() -> None:
    stream = ReportStream()
    assert billing_event(stream.report("FINAL")).report_status == "final"
    assert not billing_event(stream.report("preliminary")).is_billing_relevant


def test_tombstone_and_missing_fields_are_permanent_errors_naming_the_position() -> None:
    stream = ReportStream(next_offset=7)
    record = stream.report("final")
    with pytest.raises(PermanentError, match=r"lab-reports/0@7 has no value"):
        billing_event(replace(record, value=None))
    value = {k: v for k, v in record.value.items() if k != "accession"}  # type: ignore[union-attr]
    with pytest.raises(PermanentError, match="missing field 'accession'"):
        billing_event(replace(record, value=value))


def test_bad_values_are_not_echoed_in_the_error() -> None:
    record = ReportStream().report("final")
    record = replace(record, value={**record.value, "timestamp": "Jane Doe 555-0100"})  # type: ignore[dict-item]
    with pytest.raises(PermanentError) as caught:
        billing_event(record)
    assert "Jane" not in str(caught.value) and "555" not in str(caught.value)


def test_unknown_status_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="unknown report_status"):
        billing_event(ReportStream().report("archived"))

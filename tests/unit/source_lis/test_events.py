"""Event ids are deterministic UUIDv5; status vocabularies map HL7 onto FHIR."""

from __future__ import annotations

import uuid

import pytest

from connectors.source_lis import events


def test_event_id_is_uuid5_over_source_accession_code_sub_id_and_version() -> None:
    expected = uuid.uuid5(events.NAMESPACE, "result|lis|ACC1|718-7|1|F@20260101")
    assert events.result_event_id("lis", "ACC1", "718-7", "1", "F@20260101") == str(expected)
    assert uuid.UUID(events.result_event_id("lis", "ACC1", "718-7", "1", "F")).version == 5


def test_event_id_never_changes_across_releases() -> None:
    # Pinned: sinks de-duplicate on it; a change here re-delivers every historical event.
    assert events.result_event_id("lis", "ACC00000001", "6690-2", "", "F@20260101120000+0000") == \
        str(uuid.uuid5(uuid.UUID("6f1c3a52-2b8e-5d7a-9c41-0d3e2f7b8a10"),
                       "result|lis|ACC00000001|6690-2||F@20260101120000+0000"))


@pytest.mark.parametrize("parts", [
    ("lis", "ACC1", "718-7", "", "1"), ("lis2", "ACC1", "718-7", "", "1"), ("lis", "ACC2", "718-7", "", "1"),
    ("lis", "ACC1", "789-8", "", "1"), ("lis", "ACC1", "718-7", "2", "1"), ("lis", "ACC1", "718-7", "", "2"),
])
def test_every_part_of_the_key_changes_the_id(parts: tuple[str, ...]) -> None:
    base = events.result_event_id("lis", "ACC1", "718-7", "", "1")
    assert (events.result_event_id(*parts) == base) == (parts == ("lis", "ACC1", "718-7", "", "1"))


def test_report_and_result_ids_live_in_different_spaces() -> None:
    assert events.report_event_id("lis", "A", "final", "1") != events.result_event_id("lis", "A", "final", "", "1")


@pytest.mark.parametrize(("hl7", "fhir", "event_type"), [
    ("P", "preliminary", "REPORT_PRELIMINARY"), ("F", "final", "REPORT_FINAL"),
    ("C", "corrected", "REPORT_CORRECTED"), ("X", "cancelled", "REPORT_CANCELLED"),
    ("I", "registered", "REPORT_PRELIMINARY"), ("A", "partial", "REPORT_PRELIMINARY"),
])
def test_obr25_maps_to_diagnostic_report_status(hl7: str, fhir: str, event_type: str) -> None:
    assert events.HL7_REPORT_STATUS[hl7] == fhir
    assert events.REPORT_EVENT_TYPE[fhir] == event_type


@pytest.mark.parametrize(("hl7", "fhir", "event_type", "enum"), [
    ("P", "preliminary", "LAB_RESULT_CREATED", "PENDING"), ("F", "final", "LAB_RESULT_CREATED", "VERIFIED"),
    ("C", "corrected", "LAB_RESULT_CORRECTED", "VERIFIED"), ("X", "cancelled", "LAB_RESULT_CANCELLED", "COMPLETED"),
    ("D", "entered-in-error", "LAB_RESULT_CANCELLED", "COMPLETED"),
    ("W", "entered-in-error", "LAB_RESULT_CANCELLED", "COMPLETED"),
])
def test_obx11_maps_to_observation_status(hl7: str, fhir: str, event_type: str, enum: str) -> None:
    assert events.HL7_RESULT_STATUS[hl7] == fhir
    assert events.RESULT_EVENT_TYPE[fhir] == event_type
    assert events.RESULT_STATUS_ENUM[fhir] == enum


def test_every_fhir_status_has_an_event_type() -> None:
    assert set(events.REPORT_EVENT_TYPE) == events.REPORT_STATUSES
    assert set(events.RESULT_EVENT_TYPE) == events.RESULT_STATUSES == set(events.RESULT_STATUS_ENUM)


def test_event_dicts_match_the_avro_schemas() -> None:
    import json
    from pathlib import Path

    import fastavro

    root = Path(__file__).resolve().parents[3] / "schemas"
    result = events.result_event("id", "final", 1, 1, "p", "c", "n", "v", None, None, {}, "a", None, "HH", "F",
                                 "final", None, "lis", "m")
    report = events.report_event(event_id="id", status="final", timestamp=1, version=1, patient_id="p",
                                 accession="a", code="c", name="n", result_count=1, critical=True,
                                 ordering_provider=None, observed=None, source="lis", message_id="m", metadata={})
    patient = events.patient_event(patient_id="p", timestamp=1, phone=None, email=None, sms_consent=False,
                                   email_consent=False, time_zone="UTC", language="en", source="lis",
                                   unknown_fields=["phone"])
    for name, value in (("lab_result", result), ("lab_report", report), ("patient", patient)):
        schema = fastavro.parse_schema(json.loads((root / f"{name}.avsc").read_text()))
        assert fastavro.validate(value, schema, raise_errors=True)


def test_unknown_fields_name_only_null_contact_fields() -> None:
    import pytest

    common = dict(patient_id="p", timestamp=1, sms_consent=False, email_consent=False, time_zone="UTC",
                  language="en", source="lis")
    value = events.patient_event(phone=None, email=None, unknown_fields=("email", "phone"), **common)
    assert value["unknown_fields"] == ["phone", "email"]
    assert events.patient_event(phone=None, email=None, unknown_fields=(), **common)["unknown_fields"] == []
    with pytest.raises(ValueError):
        events.patient_event(phone="+15550001111", email=None, unknown_fields=["phone"], **common)
    with pytest.raises(ValueError):
        events.patient_event(phone=None, email=None, unknown_fields=["sms_consent"], **common)

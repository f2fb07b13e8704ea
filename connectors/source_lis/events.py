"""The three events this connector produces, their ids and status vocabularies.

Event ids are UUIDv5 over the source system and the change's natural key, so the
same change always gets the same id: a re-sent HL7 message, an overlapping FHIR
poll and a replay all produce ids that sinks already know (and skip).

Statuses are normalised to FHIR's vocabularies (``DiagnosticReport.status`` for
reports, ``Observation.status`` for results); HL7 table 0123 (OBR-25) and table
0085 (OBX-11) are mapped onto them here, in one place.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection
from typing import Any

RESULT_SCHEMA = "com.drdangslab.events.LabResult"
REPORT_SCHEMA = "com.drdangslab.events.LabReport"
PATIENT_SCHEMA = "com.drdangslab.events.PatientContact"

# Fixed forever: changing it changes every event id and breaks sink de-duplication.
NAMESPACE = uuid.UUID("6f1c3a52-2b8e-5d7a-9c41-0d3e2f7b8a10")
_NS_BYTES = NAMESPACE.bytes


def event_uuid(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))``, without building UUID objects (hot path)."""
    h = _sha1(_NS_BYTES + name.encode()).hexdigest()
    # version nibble 5, RFC 4122 variant bits (10xx) on the 17th hex digit
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_sha1 = hashlib.sha1
_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}


def result_event_id(source: str, accession: str, code: str, sub_id: str, version: str) -> str:
    return event_uuid(f"result|{source}|{accession}|{code}|{sub_id}|{version}")


def report_event_id(source: str, accession: str, status: str, version: str) -> str:
    return event_uuid(f"report|{source}|{accession}|{status}|{version}")


# HL7 table 0123 (OBR-25 result status) -> DiagnosticReport.status
HL7_REPORT_STATUS = {
    "O": "registered", "I": "registered", "S": "registered",
    "A": "partial", "P": "preliminary", "R": "preliminary",
    "F": "final", "C": "corrected", "X": "cancelled",
}
# HL7 table 0085 (OBX-11 observation result status) -> Observation.status
HL7_RESULT_STATUS = {
    "I": "registered", "S": "registered", "P": "preliminary", "R": "preliminary",
    "F": "final", "U": "final", "C": "corrected", "X": "cancelled",
    "D": "entered-in-error", "W": "entered-in-error",
}
REPORT_STATUSES = frozenset({
    "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
    "cancelled", "entered-in-error",
})
RESULT_STATUSES = REPORT_STATUSES - {"partial", "appended"}

REPORT_EVENT_TYPE = {
    "registered": "REPORT_PRELIMINARY", "partial": "REPORT_PRELIMINARY", "preliminary": "REPORT_PRELIMINARY",
    "final": "REPORT_FINAL", "amended": "REPORT_CORRECTED", "corrected": "REPORT_CORRECTED",
    "appended": "REPORT_CORRECTED", "cancelled": "REPORT_CANCELLED", "entered-in-error": "REPORT_ENTERED_IN_ERROR",
}
RESULT_EVENT_TYPE = {
    "registered": "LAB_RESULT_CREATED", "preliminary": "LAB_RESULT_CREATED", "final": "LAB_RESULT_CREATED",
    "amended": "LAB_RESULT_CORRECTED", "corrected": "LAB_RESULT_CORRECTED",
    "cancelled": "LAB_RESULT_CANCELLED", "entered-in-error": "LAB_RESULT_CANCELLED",
}
# The original schema's enum: PENDING until the lab released the value, VERIFIED once
# final (or corrected); COMPLETED for a result that ended without a value (cancelled).
RESULT_STATUS_ENUM = {
    "registered": "PENDING", "preliminary": "PENDING", "final": "VERIFIED", "amended": "VERIFIED",
    "corrected": "VERIFIED", "cancelled": "COMPLETED", "entered-in-error": "COMPLETED",
}
# HL7 carries no version number: the status gives an ordinal one (the event id also
# covers the status-change time, so two corrections still get different ids).
STATUS_RANK = {
    "registered": 1, "partial": 1, "preliminary": 1, "final": 2, "amended": 3, "corrected": 3,
    "appended": 3, "cancelled": 4, "entered-in-error": 4,
}
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA"})


def result_event(event_id: str, status: str, timestamp: int, version: int, patient_id: str, code: str,
                 name: str, value: str, unit: str | None, reference_range: str | None,
                 metadata: dict[str, str], accession: str, loinc: str | None, flag: str | None,
                 raw_status: str, report_status: str, observed: int | None, source: str,
                 message_id: str) -> dict[str, Any]:
    """A LabResult value (schemas/lab_result.avsc); ``status`` is an Observation.status."""
    return {
        "event_id": event_id, "event_type": RESULT_EVENT_TYPE[status], "timestamp": timestamp,
        "version": version, "patient_id": patient_id, "test_id": code, "test_name": name,
        "result_value": value, "unit": unit, "reference_range": reference_range,
        "status": RESULT_STATUS_ENUM[status], "metadata": metadata, "accession": accession,
        "loinc_code": loinc, "abnormal_flag": flag, "result_status": raw_status,
        "report_status": report_status, "observed_time": observed, "source_system": source,
        "source_message_id": message_id,
    }


def report_event(*, event_id: str, status: str, timestamp: int, version: int, patient_id: str,
                 accession: str, code: str, name: str, result_count: int, critical: bool,
                 ordering_provider: str | None, observed: int | None, source: str, message_id: str,
                 metadata: dict[str, str]) -> dict[str, Any]:
    """A LabReport value (schemas/lab_report.avsc); ``status`` is a DiagnosticReport.status."""
    return {
        "event_id": event_id, "event_type": REPORT_EVENT_TYPE[status], "timestamp": timestamp,
        "version": version, "patient_id": patient_id, "accession": accession, "test_code": code,
        "test_name": name, "report_status": status, "result_count": result_count, "critical": critical,
        "ordering_provider_id": ordering_provider, "observed_time": observed, "source_system": source,
        "source_message_id": message_id, "metadata": metadata,
    }


# PatientContact fields a source may leave out of an update (``unknown_fields``).
CONTACT_FIELDS = ("phone", "email")


def patient_event(*, patient_id: str, timestamp: int, phone: str | None, email: str | None, sms_consent: bool,
                  email_consent: bool, time_zone: str, language: str, source: str,
                  unknown_fields: Collection[str]) -> dict[str, Any]:
    """A PatientContact value (schemas/patient.avsc): the only event with contact PHI.

    ``unknown_fields`` names the fields this update does not carry (consumers keep what they
    had); a null ``phone``/``email`` that is not listed means the contact detail was removed.
    """
    unknown = [name for name in CONTACT_FIELDS if name in unknown_fields]
    if len(unknown) != len(unknown_fields) or ("phone" in unknown and phone is not None) \
            or ("email" in unknown and email is not None):
        raise ValueError("unknown_fields lists only phone/email, and only when they are null")
    return {
        "patient_id": patient_id, "timestamp": timestamp, "phone": phone, "email": email,
        "sms_consent": sms_consent, "email_consent": email_consent, "time_zone": time_zone or "UTC",
        "language": language or "en", "source_system": source, "unknown_fields": unknown,
    }

"""The parts of LabReport and PatientContact records the notification sink needs.

A report event keeps identifiers and statuses only (no test name, no values); a contact
keeps what is needed to reach the patient. Neither is ever logged; errors name the
record by topic/partition/offset.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from common import PermanentError, SinkRecord

FINAL_STATUSES = frozenset({"final"})
CORRECTED_STATUSES = frozenset({"amended", "corrected", "appended"})
RETRACTED_STATUSES = frozenset({"cancelled", "entered-in-error"})
NOT_FINAL_STATUSES = frozenset({"registered", "partial", "preliminary", "unknown"})
KNOWN_STATUSES = FINAL_STATUSES | CORRECTED_STATUSES | RETRACTED_STATUSES | NOT_FINAL_STATUSES
# The header source-lis puts on every record of a backfill: such records notify nobody.
REPLAY_HEADER = "replay"


class ReportEvent(NamedTuple):
    event_id: str
    source_system: str
    accession: str
    patient_id: str
    report_status: str
    critical: bool
    event_time: int  # epoch ms of the status change at the LIS
    replayed: bool
    record: SinkRecord


class Contact(NamedTuple):
    patient_id: str
    phone: str | None
    email: str | None
    sms_consent: bool
    email_consent: bool
    time_zone: str
    language: str
    contact_time: int
    unknown: frozenset[str] = frozenset()  # fields this update did not carry: keep what is stored


def _where(record: SinkRecord) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"


def report_event(record: SinkRecord) -> ReportEvent:
    """Extract a ReportEvent; a record that is not a usable LabReport is a PermanentError."""
    value: dict[str, Any] | None = record.value
    if value is None:
        raise PermanentError(f"record {_where(record)} has no value (tombstone); expected a LabReport")
    try:
        event = ReportEvent(
            event_id=str(value["event_id"]),
            source_system=str(value["source_system"]),
            accession=str(value["accession"]),
            patient_id=str(value["patient_id"]),
            report_status=str(value["report_status"]).strip().lower(),
            critical=bool(value.get("critical", False)),
            event_time=int(value["timestamp"]),
            replayed=(record.header(REPLAY_HEADER) or b"").lower() == b"true",
            record=record,
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise PermanentError(f"record {_where(record)} is not a usable LabReport ({detail})") from None
    if event.report_status not in KNOWN_STATUSES:
        raise PermanentError(f"record {_where(record)} (event {event.event_id}) has an unknown report_status")
    if not event.patient_id or not event.accession:
        raise PermanentError(f"record {_where(record)} (event {event.event_id}) has no patient or accession")
    return event


def contact(record: SinkRecord) -> Contact | None:
    """A contact update; None for a tombstone (the patient's contact is forgotten)."""
    value: dict[str, Any] | None = record.value
    if value is None:
        return None
    try:
        return Contact(
            patient_id=str(value["patient_id"]),
            phone=value.get("phone") or None,
            email=value.get("email") or None,
            sms_consent=bool(value.get("sms_consent", False)),
            email_consent=bool(value.get("email_consent", False)),
            time_zone=str(value.get("time_zone") or "UTC"),
            language=str(value.get("language") or "en"),
            contact_time=int(value.get("timestamp") or record.timestamp_ms),
            unknown=frozenset(str(name) for name in value.get("unknown_fields") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise PermanentError(f"record {_where(record)} is not a usable PatientContact ({detail})") from None

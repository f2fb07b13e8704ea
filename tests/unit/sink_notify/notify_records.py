"""LabReport and PatientContact records as the runtime hands them to the notification sink."""

from __future__ import annotations

import itertools
import time
from typing import Any

from common.records import SinkRecord

REPORTS = "lab-reports"
PATIENTS = "patients"
_offsets = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


def report(patient: str = "P1", accession: str = "ACC1", status: str = "final", *, critical: bool = False,
           event_id: str | None = None, timestamp: int | None = None, replay: bool = False,
           offset: int | None = None, partition: int = 0) -> SinkRecord:
    value: dict[str, Any] = {
        "event_id": event_id or f"ev-{accession}-{status}", "event_type": "REPORT_FINAL",
        "timestamp": timestamp if timestamp is not None else now_ms(), "version": 1, "patient_id": patient,
        "accession": accession, "test_code": "58410-2", "test_name": "CANARY-TEST-NAME", "report_status": status,
        "result_count": 3, "critical": critical, "ordering_provider_id": "DR1", "observed_time": None,
        "source_system": "lis", "source_message_id": f"MSG-{accession}", "metadata": {},
    }
    headers = [("replay", b"true")] if replay else []
    return SinkRecord(REPORTS, partition, next(_offsets) if offset is None else offset, value["timestamp"], patient,
                      value, patient.encode(), b"raw-" + accession.encode(), headers)


def contact(patient: str = "P1", *, phone: str | None = "+15550001111", email: str | None = "p1@example.org",
            sms: bool = True, email_consent: bool = True, zone: str = "UTC", language: str = "en",
            timestamp: int | None = None) -> SinkRecord:
    value = {"patient_id": patient, "timestamp": timestamp if timestamp is not None else now_ms(), "phone": phone,
             "email": email, "sms_consent": sms, "email_consent": email_consent, "time_zone": zone,
             "language": language, "source_system": "lis"}
    return SinkRecord(PATIENTS, 0, next(_offsets), value["timestamp"], patient, value, patient.encode(), b"raw", [])

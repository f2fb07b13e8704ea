"""An parsed ORU^R01 (:class:`OruMessage`) -> LabResult/LabReport/PatientContact records.

Each OBR group is one report: a LabReport event for its OBR-25 status, and one
LabResult per OBX, all for the patient of the OBR's own patient group (a message
may carry several patients). HL7 has no version numbers, so the event ids cover
the status and the status-change time (OBR-22, else MSH-7): a re-sent message
maps to the same ids, a correction to new ones. Content the events cannot carry (an unknown
status code, no patient id of the configured type, no accession) raises
:class:`Hl7ContentError`: the message goes to the DLQ and is answered AE. The
"contact already sent" cache only learns a message's contacts once the whole
message mapped, so a dead-lettered message does not suppress the next one's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from zoneinfo import ZoneInfo

from common import PermanentError, SourceRecord
from connectors.source_lis import events
from connectors.source_lis.hl7_parser import Hl7Patient, OruMessage, parse_ts


# In the "contact already sent" cache: a phone or e-mail no message has told us yet.
_UNKNOWN = object()


class Hl7ContentError(PermanentError):
    """A well-formed ORU^R01 whose content cannot be mapped (answer AE; message names MSH-10 only)."""


class Hl7Mapper:
    def __init__(self, *, source: str, results_topic: str, reports_topic: str, patients_topic: str,
                 patient_id_type: str, patient_id_system: str | None, time_zone: str = "UTC",
                 contact_cache_size: int = 100_000, emit_contacts: bool = True) -> None:
        """``emit_contacts=False`` leaves PatientContact records out (an HL7 replay: the archive's
        contact details are historical and would overwrite newer ones on the compacted topic)."""
        self.source = source
        self.results_topic = results_topic
        self.reports_topic = reports_topic
        self.patients_topic = patients_topic
        self.patient_id_type = patient_id_type
        self.patient_id_system = patient_id_system
        self.zone = ZoneInfo(time_zone)
        self.emit_contacts = emit_contacts
        self._contacts: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._contact_cache_size = contact_cache_size

    def reset(self) -> None:
        """Forget which contacts were sent (after an aborted batch they must be sent again)."""
        self._contacts.clear()

    def patient_id(self, patient: Hl7Patient) -> str | None:
        """PID-3 chosen by assigning authority (if configured) or identifier type, never by position."""
        for ident in patient.identifiers:
            if not ident.value:
                continue
            if self.patient_id_system is not None:
                if self.patient_id_system in (ident.authority, ident.authority_id):
                    return ident.value
            elif ident.type_code == self.patient_id_type:
                return ident.value
        return None

    def _id_setting(self) -> str:
        """Which setting picks the patient id, and its value (names no patient data)."""
        if self.patient_id_system is not None:
            return f"assigning authority {self.patient_id_system} (PATIENT_ID_SYSTEM)"
        return f"type {self.patient_id_type} (PATIENT_ID_TYPE; PATIENT_ID_SYSTEM unset)"

    def map(self, msg: OruMessage, partition: dict[str, Any], offset: dict[str, Any],
            headers: list[tuple[str, bytes]]) -> list[SourceRecord]:
        where = f"message {msg.control_id}"
        message_ms = parse_ts(msg.message_time, self.zone)
        records: list[SourceRecord] = []
        contacts: dict[str, tuple[Any, ...]] = {}  # this message's, remembered once all of it mapped
        source = self.source
        for index, order in enumerate(msg.orders, 1):
            patient_id = self.patient_id(order.patient)
            if not patient_id:
                raise Hl7ContentError(f"{where}: OBR {index} has no patient with a PID-3 identifier of "
                                      f"{self._id_setting()}")
            if self.emit_contacts:
                contact = self._contact(order.patient, patient_id, message_ms or 0, contacts, partition, offset,
                                        headers)
                if contact is not None:
                    records.append(contact)
            accession = order.filler
            if not accession:
                raise Hl7ContentError(f"{where}: OBR {index} has no filler order number (OBR-3)")
            status = events.HL7_REPORT_STATUS.get(order.status)
            if status is None:
                raise Hl7ContentError(f"{where}: OBR {index} has an unsupported result status (OBR-25)")
            changed_text = order.status_changed or msg.message_time
            changed = parse_ts(changed_text, self.zone) or message_ms
            if changed is None:
                raise Hl7ContentError(f"{where}: OBR {index} has no usable OBR-22 or MSH-7 time")
            observed = parse_ts(order.observed, self.zone)
            critical = False
            for obs in order.observations:
                obs_status = events.HL7_RESULT_STATUS.get(obs.status)
                if obs_status is None:
                    raise Hl7ContentError(f"{where}: OBX {obs.set_id} has an unsupported result status (OBX-11)")
                if not obs.code:
                    raise Hl7ContentError(f"{where}: OBX {obs.set_id} has no observation id (OBX-3)")
                value, unit, flag = obs.value, obs.unit, obs.flag
                metadata: dict[str, str] = {}
                if obs_status == "entered-in-error":
                    # A wrong value (OBX-11 W: of another patient, say) must not travel on.
                    value, unit, flag = "", None, None
                else:
                    metadata["value_type"] = obs.value_type
                    if obs.value_code:
                        metadata["value_code"] = obs.value_code
                        if obs.value_system:
                            metadata["value_system"] = obs.value_system
                if flag in events.CRITICAL_FLAGS:
                    critical = True
                if obs.notes:
                    metadata["note"] = "\n".join(obs.notes)
                value = events.result_event(
                    event_id=events.result_event_id(source, accession, obs.code, obs.sub_id,
                                                    f"{obs.status}@{changed_text}"),
                    status=obs_status, timestamp=changed, version=events.STATUS_RANK[obs_status],
                    patient_id=patient_id, code=obs.code, name=obs.name or obs.code, value=value,
                    unit=unit, reference_range=obs.reference_range, metadata=metadata, accession=accession,
                    loinc=obs.code if obs.coding_system == "LN" else None, flag=flag, raw_status=obs.status,
                    report_status=status, observed=parse_ts(obs.observed, self.zone) or observed, source=source,
                    message_id=msg.control_id,
                )
                records.append(SourceRecord(self.results_topic, patient_id, value, events.RESULT_SCHEMA, partition,
                                            offset, headers))
            report = events.report_event(
                event_id=events.report_event_id(source, accession, status, f"{order.status}@{changed_text}"),
                status=status, timestamp=changed, version=events.STATUS_RANK[status], patient_id=patient_id,
                accession=accession, code=order.code, name=order.name or order.code,
                result_count=len(order.observations), critical=critical, ordering_provider=order.ordering_provider,
                observed=observed, source=source, message_id=msg.control_id,
                metadata={"note": "\n".join(order.notes)} if order.notes else {},
            )
            records.append(SourceRecord(self.reports_topic, patient_id, report, events.REPORT_SCHEMA, partition,
                                        offset, headers))
        self._remember(contacts)
        return records

    def forget_contact(self, patient_id: str) -> None:
        """The contact record was not stored after all: send it with the next message."""
        self._contacts.pop(patient_id, None)

    def _remember(self, contacts: dict[str, tuple[Any, ...]]) -> None:
        for patient_id, details in contacts.items():
            self._contacts[patient_id] = details
            self._contacts.move_to_end(patient_id)
            if len(self._contacts) > self._contact_cache_size:
                self._contacts.popitem(last=False)

    def _contact(self, patient: Hl7Patient, patient_id: str, timestamp: int, pending: dict[str, tuple[Any, ...]],
                 partition: dict[str, Any], offset: dict[str, Any],
                 headers: list[tuple[str, bytes]]) -> SourceRecord | None:
        phone = email = None
        if patient.carries_phone:
            mobile = next((p[0] for p in patient.phones if p[2] == "CP"), None)
            phone = mobile or (patient.phones[0][0] if patient.phones else None)
        if patient.carries_email:
            email = patient.emails[0] if patient.emails else None
        unknown = [name for name, carried in (("phone", patient.carries_phone), ("email", patient.carries_email))
                   if not carried]
        time_zone, language = patient.time_zone or "UTC", patient.language or "en"
        # HL7 has no patient version: send a contact only when what consumers hold would change
        # (the topic is compacted anyway). A field the message does not carry stays as it was.
        previous = pending.get(patient_id, self._contacts.get(patient_id))
        held = (phone if patient.carries_phone else (previous[0] if previous else _UNKNOWN),
                email if patient.carries_email else (previous[1] if previous else _UNKNOWN),
                patient.sms_consent, patient.email_consent, time_zone, language)
        if held == previous:
            return None
        pending[patient_id] = held
        # Consent and time zone come from the site's ZPC segment: without one they are false / UTC,
        # as the message states them (HL7 has no standard place for them; consent is never assumed).
        value = events.patient_event(patient_id=patient_id, timestamp=timestamp, phone=phone, email=email,
                                     sms_consent=patient.sms_consent, email_consent=patient.email_consent,
                                     time_zone=time_zone, language=language, source=self.source,
                                     unknown_fields=unknown)
        return SourceRecord(self.patients_topic, patient_id, value, events.PATIENT_SCHEMA, partition, offset, headers)

"""FHIR R4 DiagnosticReport + Observations + Patient -> LabResult/LabReport/PatientContact records.

This is the hot path of the FHIR mode (every result passes here once), so it reads
plain dicts directly and builds each event dict in one call. A report that cannot
be mapped (unknown status, no patient id, a referenced Observation missing from
the page) becomes one DeadLetter carrying the report and its Observations; the
error names only resource ids and versions, never values.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from common.errors import PermanentError
from common.records import DeadLetter, SourceRecord
from connectors.source_lis import events
from connectors.source_lis.fhir_client import FhirPage, parse_instant

LOINC = "http://loinc.org"
FILLER_TYPE = "FILL"  # HL7 v2-0203 "filler identifier": the LIS accession
TZ_EXTENSION = "http://hl7.org/fhir/StructureDefinition/tz-code"
# Contact preferences and consent are not in core FHIR: the LIS sends them as extensions.
SMS_CONSENT_EXTENSION = "https://drdangslab.com/fhir/StructureDefinition/sms-consent"
EMAIL_CONSENT_EXTENSION = "https://drdangslab.com/fhir/StructureDefinition/email-consent"
ORDERING_PROVIDER_EXTENSION = "https://drdangslab.com/fhir/StructureDefinition/ordering-provider"

Record = SourceRecord | DeadLetter
RESULT_SCHEMA = events.RESULT_SCHEMA
CRITICAL = events.CRITICAL_FLAGS
_EMPTY: dict[str, Any] = {}
# Shared by every result without notes: records are only read (serialised), never changed.
_NO_METADATA: dict[str, str] = {}


class UnmappableReport(PermanentError):
    """A report the mapping cannot turn into events (the message names ids only)."""


def _code(concept: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """(code, name, LOINC code or None) of a CodeableConcept, preferring LOINC."""
    if not concept:
        raise KeyError("code")
    codings = concept.get("coding") or ()
    if codings and codings[0].get("system") == LOINC:  # the usual case, without the loop
        code = codings[0]["code"]
        return code, concept.get("text") or codings[0].get("display") or code, code
    chosen = None
    for coding in codings:
        if coding.get("system") == LOINC:
            chosen = coding
            break
    if chosen is None:
        if not codings:
            raise KeyError("code")
        chosen = codings[0]
    code = chosen["code"]
    return code, concept.get("text") or chosen.get("display") or code, code if chosen.get("system") == LOINC else None


def _value(obs: dict[str, Any]) -> tuple[str, str | None]:
    q = obs.get("valueQuantity")
    if q is not None:
        value = q.get("value")
        text = "" if value is None else (str(value) if not isinstance(value, float) else repr(value))
        comparator = q.get("comparator")
        return (comparator + text if comparator else text), q.get("unit") or q.get("code")
    if "valueString" in obs:
        return str(obs["valueString"]), None
    cc = obs.get("valueCodeableConcept")
    if cc is not None:
        codings = cc.get("coding") or [{}]
        return cc.get("text") or codings[0].get("display") or codings[0].get("code", ""), None
    for key in ("valueInteger", "valueBoolean", "valueDateTime"):
        if key in obs:
            return str(obs[key]), None
    return "", None


def _range(obs: dict[str, Any]) -> str | None:
    ranges = obs.get("referenceRange")
    if not ranges:
        return None
    r = ranges[0]
    if "text" in r:
        return str(r["text"])
    low, high = r.get("low", _EMPTY).get("value"), r.get("high", _EMPTY).get("value")
    if low is not None and high is not None:
        return f"{low}-{high}"
    if high is not None:
        return f"<{high}"
    if low is not None:
        return f">{low}"
    return None


def _flag(interpretation: list[dict[str, Any]]) -> str | None:
    codings = interpretation[0].get("coding") or ()
    return codings[0].get("code") if codings else None


def _extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    for ext in resource.get("extension") or ():
        if ext.get("url") == url:
            return ext
    return None


class FhirMapper:
    """Turns one :class:`FhirPage` into records for the three topics."""

    def __init__(self, *, source: str, results_topic: str, reports_topic: str, patients_topic: str,
                 patient_id_type: str, patient_id_system: str | None, partition: dict[str, Any],
                 headers: list[tuple[str, bytes]] | None = None,
                 topic_filter: Callable[[str], bool] | None = None, patient_cache_size: int = 100_000) -> None:
        self.source = source
        self.results_topic = results_topic
        self.reports_topic = reports_topic
        self.patients_topic = patients_topic
        self.patient_id_type = patient_id_type
        self.patient_id_system = patient_id_system
        self.partition = partition
        self.headers = headers or []
        self.topic_filter = topic_filter
        # (patient id, versionId) already sent: the topic is compacted, this only saves volume.
        self._patients_sent: OrderedDict[str, str] = OrderedDict()
        self._patient_cache_size = patient_cache_size

    def map_page(self, page: FhirPage) -> list[Record]:
        out: list[Record] = []
        for report in page.reports:
            try:
                self._map_report(report, page, out)
            except Exception as exc:  # noqa: BLE001 - one bad report must not stop the stream
                out.append(self._dead_letter(report, page, exc))
        if self.topic_filter is not None:
            out = [r for r in out if isinstance(r, DeadLetter) or self.topic_filter(r.topic)]
        return out

    def reset(self) -> None:
        """Forget which contacts were sent (after an aborted batch they must be sent again)."""
        self._patients_sent.clear()

    def patient_id(self, patient: dict[str, Any]) -> str | None:
        """The identifier chosen by system (if configured) or type code, not by position."""
        for ident in patient.get("identifier") or ():
            if self.patient_id_system is not None:
                if ident.get("system") == self.patient_id_system and ident.get("value"):
                    return str(ident["value"])
                continue
            for coding in (ident.get("type") or {}).get("coding") or ():
                if coding.get("code") == self.patient_id_type and ident.get("value"):
                    return str(ident["value"])
        return None

    def _map_report(self, report: dict[str, Any], page: FhirPage, out: list[Record]) -> None:
        rid = report.get("id") or "?"
        meta = report.get("meta") or {}
        version = str(meta.get("versionId", "1"))
        where = f"DiagnosticReport/{rid}/_history/{version}"
        status = report.get("status")
        if status not in events.REPORT_STATUSES:
            raise UnmappableReport(f"{where}: unsupported DiagnosticReport.status")
        included = page.included
        subject = included.get((report.get("subject") or {}).get("reference", ""))
        patient_id = self.patient_id(subject) if subject else None
        if not subject or not patient_id:
            raise UnmappableReport(f"{where}: no patient identifier of the configured type")
        accession = self._accession(report) or rid
        try:
            test_code, test_name, _ = _code(report.get("code"))
        except KeyError:
            raise UnmappableReport(f"{where}: DiagnosticReport.code missing") from None
        updated = parse_instant(meta["lastUpdated"])
        effective = report.get("effectiveDateTime")
        observed = parse_instant(effective) if effective else None
        source, partition, offset, headers = self.source, self.partition, page.offset, self.headers
        topic = self.results_topic
        records: list[Record] = []
        patient_version = self._patient_version(subject)
        if self._patients_sent.get(patient_id) != patient_version:
            records.append(self._patient_record(subject, patient_id, offset))
        critical = False
        count = 0
        result_event, result_event_id, critical_flags = events.result_event, events.result_event_id, CRITICAL
        statuses = events.RESULT_STATUS_ENUM
        for ref in report.get("result") or ():
            obs = included.get(ref.get("reference", ""))
            if obs is None:
                raise UnmappableReport(f"{where}: referenced Observation not included in the page")
            obs_status = obs.get("status")
            if obs_status not in statuses:
                raise UnmappableReport(f"{where}: unsupported Observation.status")
            try:
                code, name, loinc = _code(obs.get("code"))
            except KeyError:
                raise UnmappableReport(f"{where}: Observation.code missing") from None
            obs_meta = obs.get("meta") or _EMPTY
            obs_version = str(obs_meta.get("versionId", "1"))
            obs_id = obs.get("id", "")
            value, unit = _value(obs)
            interpretation = obs.get("interpretation")
            flag = _flag(interpretation) if interpretation else None
            if flag in critical_flags:
                critical = True
            obs_time = obs.get("effectiveDateTime")
            obs_updated = obs_meta.get("lastUpdated")
            notes = obs.get("note")
            # Positional: this call runs once per result (see events.result_event for the fields).
            value_dict = result_event(
                result_event_id(source, accession, code, obs_id, obs_version), obs_status,
                parse_instant(obs_updated) if obs_updated else updated,
                int(obs_version) if obs_version.isdigit() else 1, patient_id, code, name, value, unit,
                _range(obs), {"note": " ".join(n.get("text", "") for n in notes)} if notes else _NO_METADATA,
                accession, loinc, flag, obs_status, status, parse_instant(obs_time) if obs_time else observed,
                source, f"Observation/{obs_id}/_history/{obs_version}",
            )
            records.append(SourceRecord(topic, patient_id, value_dict, RESULT_SCHEMA, partition, offset, headers))
            count += 1
        provider = _extension(report, ORDERING_PROVIDER_EXTENSION)
        report_value = events.report_event(
            event_id=events.report_event_id(source, accession, status, version),
            status=status, timestamp=updated, version=int(version) if version.isdigit() else 1,
            patient_id=patient_id, accession=accession, code=test_code, name=test_name, result_count=count,
            critical=critical,
            ordering_provider=(provider.get("valueIdentifier") or {}).get("value") if provider else None,
            observed=observed, source=source, message_id=where, metadata={},
        )
        records.append(SourceRecord(self.reports_topic, patient_id, report_value, events.REPORT_SCHEMA, partition,
                                    offset, headers))
        out.extend(records)
        # Only now: had the report failed, its contact record would have been dropped with it.
        sent = self._patients_sent
        sent[patient_id] = patient_version
        sent.move_to_end(patient_id)
        if len(sent) > self._patient_cache_size:
            sent.popitem(last=False)

    @staticmethod
    def _accession(report: dict[str, Any]) -> str | None:
        identifiers = report.get("identifier") or ()
        for ident in identifiers:
            for coding in (ident.get("type") or {}).get("coding") or ():
                if coding.get("code") == FILLER_TYPE and ident.get("value"):
                    return str(ident["value"])
        return str(identifiers[0]["value"]) if identifiers and identifiers[0].get("value") else None

    @staticmethod
    def _patient_version(patient: dict[str, Any]) -> str:
        return f"{patient.get('id')}/{(patient.get('meta') or {}).get('versionId', '1')}"

    def _patient_record(self, patient: dict[str, Any], patient_id: str, offset: dict[str, Any]) -> SourceRecord:
        meta = patient.get("meta") or {}
        phone = email = None
        for telecom in patient.get("telecom") or ():
            system = telecom.get("system")
            if system == "phone" and (phone is None or telecom.get("use") == "mobile"):
                phone = telecom.get("value")
            elif system == "email" and email is None:
                email = telecom.get("value")
        sms = _extension(patient, SMS_CONSENT_EXTENSION)
        mail = _extension(patient, EMAIL_CONSENT_EXTENSION)
        tz = _extension(patient, TZ_EXTENSION)
        language = "en"
        for comm in patient.get("communication") or ():
            codings = (comm.get("language") or {}).get("coding") or ()
            if codings and codings[0].get("code"):
                language = codings[0]["code"]
                if comm.get("preferred"):
                    break
        value = events.patient_event(
            patient_id=patient_id,
            timestamp=parse_instant(meta["lastUpdated"]) if "lastUpdated" in meta else 0,
            phone=phone, email=email, sms_consent=bool(sms and sms.get("valueBoolean")),
            email_consent=bool(mail and mail.get("valueBoolean")),
            time_zone=(tz.get("valueCode") if tz else None) or "UTC", language=language, source=self.source,
        )
        return SourceRecord(self.patients_topic, patient_id, value, events.PATIENT_SCHEMA, self.partition, offset,
                            self.headers)

    def _dead_letter(self, report: dict[str, Any], page: FhirPage, error: Exception) -> DeadLetter:
        if not isinstance(error, UnmappableReport):
            rid = report.get("id") or "?"
            error = UnmappableReport(f"DiagnosticReport/{rid}: mapping failed ({type(error).__name__})")
        related = [report] + [page.included[r["reference"]] for r in report.get("result") or ()
                              if isinstance(r, dict) and r.get("reference") in page.included]
        payload = json.dumps({"resourceType": "Bundle", "type": "collection",
                              "entry": [{"resource": r} for r in related]}).encode()
        try:
            accession = self._accession(report)
        except Exception:  # noqa: BLE001 - the identifier itself may be what is malformed
            accession = None
        return DeadLetter(payload=payload, error=error, key=(accession or "").encode() or None,
                          headers=list(self.headers), source_partition=self.partition, source_offset=page.offset)

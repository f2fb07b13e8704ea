"""FHIR R4 DiagnosticReport + Observations + Patient -> LabResult/LabReport/PatientContact records.

This is the hot path of the FHIR mode (every result passes here once), so it reads
plain dicts directly and builds each event dict in one call. A report that cannot
be mapped (unknown status, no patient id, a referenced Observation missing from
the page, an element of the wrong JSON type) becomes one DeadLetter carrying the
report and its Observations; the error names only resource ids, versions and element
paths, never values. A Bundle entry that is not a resource at all is dead-lettered
on its own. A dead letter this task already produced is not produced again (an
entry without id or lastUpdated cannot enter the cursor's seen set, and every
search re-reads the overlap window).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from common import DeadLetter, PermanentError, SourceRecord
from connectors.source_lis import events
from connectors.source_lis.fhir_client import FhirPage, parse_instant
from connectors.source_lis.fhir_shapes import shape_problem

log = logging.getLogger(__name__)

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


class MalformedResource(UnmappableReport):
    """An element of the wrong JSON type; ``resource`` is the culprit when it is not the report
    or one of its Observations (it then travels in the dead letter too)."""

    def __init__(self, message: str, resource: Any = None) -> None:
        super().__init__(message)
        self.resource = resource


class PatientIdMismatch(UnmappableReport):
    """The subject Patient has no identifier of the configured type / system."""

    def __init__(self, message: str, types: frozenset[str], systems: frozenset[str]) -> None:
        super().__init__(message)
        self.types = types
        self.systems = systems


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _label(resource_type: str, rid: Any) -> str:
    """``Type/id`` for an error message, when the id is a FHIR id (and so holds no patient data)."""
    return f"{resource_type}/{rid}" if isinstance(rid, str) and _ID.fullmatch(rid) else f"a {resource_type}"


def _code(concept: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """(code, name, LOINC code or None) of a CodeableConcept, preferring LOINC."""
    if not concept:
        raise KeyError("code")
    codings = concept.get("coding") or ()
    if codings and codings[0].get("system") == LOINC:  # the usual case, without the loop
        code = codings[0]["code"]
        if code is None:
            raise KeyError("code")
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
    if code is None:
        raise KeyError("code")
    return code, concept.get("text") or chosen.get("display") or code, code if chosen.get("system") == LOINC else None


def _number(value: Any) -> str:
    """A JSON number as text (floats as their shortest repr); anything else is malformed."""
    kind = type(value)
    if kind is float:
        return repr(value)
    if kind is int:
        return str(value)
    raise TypeError("not a number")


def _quantity(q: dict[str, Any]) -> tuple[str, str | None]:
    value = q.get("value")
    text = "" if value is None else _number(value)
    comparator = q.get("comparator")
    return (comparator + text if comparator else text), q.get("unit") or q.get("code")


def _value(obs: dict[str, Any]) -> tuple[str, str | None, dict[str, str]]:
    """(result value, unit, metadata) of an Observation's value[x]; ``metadata.value_type`` names
    the FHIR type as OBX-2 does for HL7, a coded value keeps its code and system."""
    q = obs.get("valueQuantity")
    if q is not None:
        value, unit = _quantity(q)
        return value, unit, {"value_type": "Quantity"}
    text = obs.get("valueString")
    if text is not None:
        return text, None, {"value_type": "string"}
    cc = obs.get("valueCodeableConcept")
    if cc is not None:
        codings = cc.get("coding") or ()
        coding = codings[0] if codings else _EMPTY
        code, system = coding.get("code"), coding.get("system")
        metadata = {"value_type": "CodeableConcept"}
        if code is not None:  # the code and its system, not only the words shown to a reader
            metadata["value_code"] = code
            if system is not None:
                metadata["value_system"] = system
            if type(code) is not str or (system is not None and type(system) is not str):
                raise TypeError("valueCodeableConcept")
        return cc.get("text") or coding.get("display") or code or "", None, metadata
    value = obs.get("valueInteger")
    if value is not None:
        if type(value) is not int:
            raise TypeError("valueInteger")
        return str(value), None, {"value_type": "integer"}
    value = obs.get("valueBoolean")
    if value is not None:
        if type(value) is not bool:
            raise TypeError("valueBoolean")
        return ("true" if value else "false"), None, {"value_type": "boolean"}
    for key, value_type in (("valueDateTime", "dateTime"), ("valueTime", "time")):
        value = obs.get(key)
        if value is not None:
            return value, None, {"value_type": value_type}
    rng = obs.get("valueRange")
    if rng is not None:
        (low, unit), (high, high_unit) = _quantity(rng.get("low") or _EMPTY), _quantity(rng.get("high") or _EMPTY)
        return f"{low}-{high}", unit or high_unit, {"value_type": "Range"}
    ratio = obs.get("valueRatio")
    if ratio is not None:
        (num, unit), (den, _) = _quantity(ratio.get("numerator") or _EMPTY), \
            _quantity(ratio.get("denominator") or _EMPTY)
        return f"{num}:{den}", unit, {"value_type": "Ratio"}
    return "", None, {}


def _range(obs: dict[str, Any]) -> str | None:
    ranges = obs.get("referenceRange")
    if not ranges:
        return None
    r = ranges[0]
    text = r.get("text")
    if text is not None:
        if type(text) is not str:
            raise TypeError("referenceRange.text")
        return text
    low, high = (r.get("low") or _EMPTY).get("value"), (r.get("high") or _EMPTY).get("value")
    if low is not None and high is not None:
        return f"{_number(low)}-{_number(high)}"
    if high is not None:
        return f"<{_number(high)}"
    if low is not None:
        return f">{_number(low)}"
    return None


def _identifier(value: Any) -> str:
    """An identifier's value: a string, or a number some servers send for one."""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise TypeError("identifier value")


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
        # Digests of the dead letters produced since the last abort (see the module docstring).
        self._dead_lettered: OrderedDict[bytes, None] = OrderedDict()

    def map_page(self, page: FhirPage) -> list[Record]:
        out: list[Record] = [self._malformed_entry(entry, reason, page) for entry, reason in page.malformed]
        dead_letters = len(out)
        mismatched: list[PatientIdMismatch] = []
        for report in page.reports:
            try:
                self._map_report(report, page, out)
            except Exception as exc:  # noqa: BLE001 - one bad report must not stop the stream
                dead = self._dead_letter(report, page, exc)
                if isinstance(dead.error, PatientIdMismatch):
                    mismatched.append(dead.error)
                out.append(dead)
                dead_letters += 1
        if mismatched and len(mismatched) == len(page.reports):
            self._log_id_mismatch(mismatched)
        if dead_letters:
            out = [r for r in out if type(r) is not DeadLetter or self._first_time(r)]
        if self.topic_filter is not None:
            out = [r for r in out if isinstance(r, DeadLetter) or self.topic_filter(r.topic)]
        return out

    def reset(self) -> None:
        """Forget which contacts and dead letters were sent (after an aborted batch they must be sent again)."""
        self._patients_sent.clear()
        self._dead_lettered.clear()

    def patient_id(self, patient: dict[str, Any]) -> str | None:
        """The identifier chosen by system (if configured) or type code, not by position."""
        for ident in patient.get("identifier") or ():
            if self.patient_id_system is not None:
                if ident.get("system") == self.patient_id_system and ident.get("value"):
                    return _identifier(ident["value"])
                continue
            for coding in (ident.get("type") or {}).get("coding") or ():
                if coding.get("code") == self.patient_id_type and ident.get("value"):
                    return _identifier(ident["value"])
        return None

    def id_setting(self) -> str:
        """Which setting picks the patient id, and its value (names no patient data)."""
        if self.patient_id_system is not None:
            return f"system {self.patient_id_system} (PATIENT_ID_SYSTEM)"
        return f"type {self.patient_id_type} (PATIENT_ID_TYPE; PATIENT_ID_SYSTEM unset)"

    def _map_report(self, report: dict[str, Any], page: FhirPage, out: list[Record]) -> None:
        rid = report.get("id") or "?"
        meta = report.get("meta") or _EMPTY
        raw_version = meta.get("versionId") or "1"
        if type(rid) is not str or type(raw_version) not in (str, int):
            raise TypeError("id or versionId")
        version = str(raw_version)
        where = f"DiagnosticReport/{rid}/_history/{version}"
        status = report.get("status")
        if status not in events.REPORT_STATUSES:
            raise UnmappableReport(f"{where}: unsupported DiagnosticReport.status")
        included = page.included
        reference = (report.get("subject") or _EMPTY).get("reference") or ""
        subject = included.get(reference)
        if not subject:
            raise UnmappableReport(f"{where}: subject {_label('Patient', reference.rpartition('/')[2])} "
                                   "is not included in the page")
        patient_id = self.patient_id(subject)
        if not patient_id:
            raise self._mismatch(where, subject)
        accession = self._accession(report) or rid
        try:
            test_code, test_name, _ = _code(report.get("code"))
        except KeyError:
            raise UnmappableReport(f"{where}: DiagnosticReport.code missing") from None
        if type(test_code) is not str or type(test_name) is not str:
            raise TypeError("DiagnosticReport.code")
        last_updated = meta.get("lastUpdated")
        if last_updated is None:
            raise UnmappableReport(f"{where}: meta.lastUpdated missing")
        updated = parse_instant(last_updated)
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
            obs_version = obs_meta.get("versionId") or "1"
            if type(obs_version) is not str:
                if type(obs_version) is not int:
                    raise TypeError("versionId")
                obs_version = str(obs_version)
            obs_id = obs.get("id", "")
            notes = obs.get("note")
            if obs_status == "entered-in-error":
                # The value was wrong (of another patient, say): it must not travel on, nor its flag.
                value, unit, flag, metadata = "", None, None, {}
            else:
                value, unit, metadata = _value(obs)
                interpretation = obs.get("interpretation")
                flag = _flag(interpretation) if interpretation else None
            if type(code) is not str or type(name) is not str or type(value) is not str or type(obs_id) is not str \
                    or (unit is not None and type(unit) is not str) or (flag is not None and type(flag) is not str):
                raise TypeError("a result field is not a string")  # _diagnose names the element
            if notes:
                metadata["note"] = " ".join(n.get("text") or "" for n in notes)
            if flag in critical_flags:
                critical = True
            obs_time = obs.get("effectiveDateTime")
            obs_updated = obs_meta.get("lastUpdated")
            # Positional: this call runs once per result (see events.result_event for the fields).
            value_dict = result_event(
                result_event_id(source, accession, code, obs_id, obs_version), obs_status,
                parse_instant(obs_updated) if obs_updated else updated,
                int(obs_version) if obs_version.isdigit() else 1, patient_id, code, name, value, unit,
                _range(obs), metadata or _NO_METADATA,
                accession, loinc, flag, obs_status, status, parse_instant(obs_time) if obs_time else observed,
                source, f"Observation/{obs_id}/_history/{obs_version}",
            )
            records.append(SourceRecord(topic, patient_id, value_dict, RESULT_SCHEMA, partition, offset, headers))
            count += 1
        provider = _extension(report, ORDERING_PROVIDER_EXTENSION)
        provider_id = (provider.get("valueIdentifier") or _EMPTY).get("value") if provider else None
        if provider_id is not None:
            provider_id = _identifier(provider_id)
        report_value = events.report_event(
            event_id=events.report_event_id(source, accession, status, version),
            status=status, timestamp=updated, version=int(version) if version.isdigit() else 1,
            patient_id=patient_id, accession=accession, code=test_code, name=test_name, result_count=count,
            critical=critical, ordering_provider=provider_id,
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

    def _mismatch(self, where: str, patient: dict[str, Any]) -> PatientIdMismatch:
        types: set[str] = set()
        systems: set[str] = set()
        for ident in patient.get("identifier") or ():
            if isinstance(ident, dict):
                if isinstance(ident.get("system"), str):
                    systems.add(ident["system"][:100])
                for coding in (ident.get("type") or _EMPTY).get("coding") or ():
                    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                        types.add(coding["code"][:40])
        return PatientIdMismatch(f"{where}: {_label('Patient', patient.get('id'))} has no identifier of "
                                 f"{self.id_setting()}", frozenset(types), frozenset(systems))

    def _log_id_mismatch(self, mismatched: list[PatientIdMismatch]) -> None:
        types = sorted(set().union(*(m.types for m in mismatched)))[:10]
        systems = sorted(set().union(*(m.systems for m in mismatched)))[:10]
        log.warning("all %d reports of this page were dead-lettered: their patients have no identifier of %s; "
                    "check PATIENT_ID_TYPE / PATIENT_ID_SYSTEM (identifier types seen: %s; systems seen: %s)",
                    len(mismatched), self.id_setting(), ", ".join(types) or "none", ", ".join(systems) or "none",
                    extra={"count": len(mismatched)})

    @staticmethod
    def _accession(report: dict[str, Any]) -> str | None:
        identifiers = report.get("identifier") or ()
        for ident in identifiers:
            for coding in (ident.get("type") or {}).get("coding") or ():
                if coding.get("code") == FILLER_TYPE and ident.get("value"):
                    return _identifier(ident["value"])
        return _identifier(identifiers[0]["value"]) if identifiers and identifiers[0].get("value") else None

    @staticmethod
    def _patient_version(patient: dict[str, Any]) -> str:
        return f"{patient.get('id')}/{(patient.get('meta') or {}).get('versionId', '1')}"

    def _patient_record(self, patient: dict[str, Any], patient_id: str, offset: dict[str, Any]) -> SourceRecord:
        meta = patient.get("meta") or {}
        # A Patient without telecom has no phone or e-mail: null, and not listed as unknown.
        phone = email = None
        for telecom in patient.get("telecom") or ():
            system = telecom.get("system")
            if system == "phone" and (phone is None or telecom.get("use") == "mobile"):
                phone = telecom.get("value")
            elif system == "email" and email is None:
                email = telecom.get("value")
        sms = _extension(patient, SMS_CONSENT_EXTENSION)
        mail = _extension(patient, EMAIL_CONSENT_EXTENSION)
        sms_consent = (sms.get("valueBoolean") or False) if sms else False
        email_consent = (mail.get("valueBoolean") or False) if mail else False
        tz = _extension(patient, TZ_EXTENSION)
        time_zone = (tz.get("valueCode") if tz else None) or "UTC"
        language = "en"
        for comm in patient.get("communication") or ():
            codings = (comm.get("language") or {}).get("coding") or ()
            if codings and codings[0].get("code"):
                language = codings[0]["code"]
                if comm.get("preferred"):
                    break
        # "false" is not a consent: only JSON booleans are read as one.
        if type(sms_consent) is not bool or type(email_consent) is not bool:
            raise TypeError("consent")
        for text in (phone, email, time_zone, language):
            if text is not None and type(text) is not str:
                raise TypeError("a contact field is not a string")
        value = events.patient_event(
            patient_id=patient_id,
            timestamp=parse_instant(meta["lastUpdated"]) if meta.get("lastUpdated") else 0,
            phone=phone, email=email, sms_consent=sms_consent, email_consent=email_consent,
            time_zone=time_zone, language=language, source=self.source, unknown_fields=(),
        )
        return SourceRecord(self.patients_topic, patient_id, value, events.PATIENT_SCHEMA, self.partition, offset,
                            self.headers)

    def _diagnose(self, report: dict[str, Any], page: FhirPage) -> tuple[str, Any] | None:
        """(problem, the malformed resource) for the first element of the wrong JSON type in the
        report, its Observations or its subject Patient; None if all are well-typed."""
        problem = shape_problem(report, "DiagnosticReport")
        if problem is not None:
            return problem, report
        related: list[Any] = []
        for ref in report.get("result") or ():
            related.append(("Observation", page.included.get(ref.get("reference"))))
        related.append(("Patient", page.included.get((report.get("subject") or _EMPTY).get("reference"))))
        for resource_type, resource in related:
            if resource is not None:
                problem = shape_problem(resource, resource_type)
                if problem is not None:
                    return f"{_label(resource_type, resource.get('id'))}: {problem}", resource
        return None

    def _where(self, report: dict[str, Any]) -> str:
        meta = report.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        label = _label("DiagnosticReport", report.get("id"))
        if label.startswith("a ") or not isinstance(version, (str, int)) or not _ID.fullmatch(str(version)):
            return label
        return f"{label}/_history/{version}"

    def _dead_letter(self, report: dict[str, Any], page: FhirPage, error: Exception) -> DeadLetter:
        extra = None
        if not isinstance(error, PatientIdMismatch):
            # A wrong JSON type is the first thing to fix, even where it surfaced as, say, a missing code.
            try:
                found = self._diagnose(report, page)
            except Exception:  # noqa: BLE001 - a diagnosis that fails leaves the original error
                found = None
            if found is not None:
                problem, culprit = found
                error = MalformedResource(f"{self._where(report)}: {problem}", culprit)
                extra = culprit
            elif not isinstance(error, UnmappableReport):
                error = UnmappableReport(f"{self._where(report)}: mapping failed ({type(error).__name__})")
        results = report.get("result")
        related = [report] + [page.included[r["reference"]] for r in (results if type(results) is list else ())
                              if isinstance(r, dict) and isinstance(r.get("reference"), str)
                              and r["reference"] in page.included]
        if extra is not None and not any(extra is r for r in related):
            related.append(extra)
        payload = json.dumps({"resourceType": "Bundle", "type": "collection",
                              "entry": [{"resource": r} for r in related]}).encode()
        try:
            accession = self._accession(report)
        except Exception:  # noqa: BLE001 - the identifier itself may be what is malformed
            accession = None
        return DeadLetter(payload=payload, error=error, key=(accession or "").encode() or None,
                          headers=list(self.headers), source_partition=self.partition, source_offset=page.offset)

    def _malformed_entry(self, entry: Any, reason: str, page: FhirPage) -> DeadLetter:
        """A Bundle entry that is not a resource: dead-lettered as it came."""
        payload = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [entry]}).encode()
        return DeadLetter(payload=payload, error=MalformedResource(f"FHIR search page: {reason}"),
                          headers=list(self.headers), source_partition=self.partition, source_offset=page.offset)

    def _first_time(self, dead: DeadLetter) -> bool:
        digest = hashlib.sha1(dead.payload).digest()
        seen = self._dead_lettered
        if digest in seen:
            return False
        seen[digest] = None
        if len(seen) > 10_000:
            seen.popitem(last=False)
        return True


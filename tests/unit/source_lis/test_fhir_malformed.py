"""FHIR input of the wrong shape, value types, contacts, timeouts: what reaches Kafka and what the DLQ says."""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from common.errors import RetriableError
from common.records import DeadLetter, SourceRecord
from common.serde import SingleObjectSerde
from connectors.source_lis.fhir_client import FhirCursor, FhirPoller, make_http_client
from connectors.source_lis.fhir_mapping import FhirMapper

BASE = "http://lis.test/fhir"
LOINC = "http://loinc.org"
PHI = ("MRN-P1", "+15550003333", "chloe@", "Chloe", "88", "999-00")


def patient(**changes: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Patient", "id": "p1", "meta": {"versionId": "1", "lastUpdated": "2026-01-01T11:00:00Z"},
        "identifier": [{"type": {"coding": [{"code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn",
                        "value": "999-00-0000"},
                       {"type": {"coding": [{"code": "MR"}]}, "system": "urn:oid:1.2.3.4", "value": "MRN-P1"}],
        "name": [{"given": ["Chloe"]}],
        "telecom": [{"system": "phone", "value": "+15550003333", "use": "mobile"},
                    {"system": "email", "value": "chloe@example.org"}],
        "extension": [{"url": "https://drdangslab.com/fhir/StructureDefinition/sms-consent", "valueBoolean": True}],
    }
    resource.update(changes)
    return resource


def observation(oid: str = "o1", **changes: Any) -> dict[str, Any]:
    resource = {"resourceType": "Observation", "id": oid, "status": "final",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T12:00:00Z"},
                "code": {"coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose"}]},
                "valueQuantity": {"value": 88, "unit": "mg/dL"},
                "interpretation": [{"coding": [{"code": "N"}]}]}
    resource.update(changes)
    return resource


def report(rid: str = "r1", results: tuple[str, ...] = ("o1",), **changes: Any) -> dict[str, Any]:
    resource = {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T12:00:00Z"},
                "identifier": [{"type": {"coding": [{"code": "FILL"}]}, "value": f"ACC-{rid}"}],
                "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
                "subject": {"reference": "Patient/p1"}, "result": [{"reference": f"Observation/{o}"} for o in results]}
    resource.update(changes)
    return resource


def bundle(*resources: Any, raw_entries: tuple[Any, ...] = ()) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r} for r in resources] + list(raw_entries)}


def mapper(**overrides: Any) -> FhirMapper:
    values: dict[str, Any] = dict(source="lis", results_topic="lab-results", reports_topic="lab-reports",
                                  patients_topic="patients", patient_id_type="MR", patient_id_system=None,
                                  partition={"lis": "lis", "mode": "fhir"})
    values.update(overrides)
    return FhirMapper(**values)


def poller(handler: Any, deadline_s: float | None = None, timeout_s: float = 5.0) -> FhirPoller:
    client = make_http_client(base_url=BASE, timeout_s=timeout_s, transport=httpx.MockTransport(handler))
    return FhirPoller(base_url=BASE, client=client, page_size=10, overlap_ms=0, cursor=FhirCursor(),
                      deadline_s=deadline_s)


def serve(page: dict[str, Any]) -> FhirPoller:
    body = json.dumps(page).encode()
    return poller(lambda request: httpx.Response(200, content=body))


def mapped(page: dict[str, Any], m: FhirMapper | None = None) -> list[SourceRecord | DeadLetter]:
    return (m or mapper()).map_page(serve(page).next_page())


def dead_letters(out: list[SourceRecord | DeadLetter]) -> list[DeadLetter]:
    return [r for r in out if isinstance(r, DeadLetter)]


def assert_no_phi(message: str) -> None:
    for phi in PHI:
        assert phi not in message


# -- wrong JSON types: the resource is dead-lettered with a reason, the page goes on ---------------------------

def test_an_entry_that_is_not_an_object_is_dead_lettered_and_the_rest_of_the_page_is_mapped() -> None:
    out = mapped(bundle(report(), observation(), patient(), raw_entries=("oops", {"resource": 7})))
    dead = dead_letters(out)
    assert [str(d.error) for d in dead] == [
        "FHIR search page: Bundle.entry[3] is a string, expected an object",
        "FHIR search page: Bundle.entry[4].resource is a number, expected an object"]
    assert [json.loads(d.payload)["entry"] for d in dead] == [["oops"], [{"resource": 7}]]
    assert [r.topic for r in out if isinstance(r, SourceRecord)] == ["patients", "lab-results", "lab-reports"]


@pytest.mark.parametrize(("culprit", "change", "reason"), [
    ("report", {"result": ["Observation/o1"]}, "result[0] is a string, expected an object"),
    ("report", {"subject": "Patient/p1"}, "subject is a string, expected an object"),
    ("report", {"code": {"coding": {"code": "x"}}}, "code.coding is an object, expected an array"),
    ("report", {"meta": {"versionId": "1", "lastUpdated": "2026-01-01T12:00:00Z"}, "effectiveDateTime": 5},
     "effectiveDateTime is a number, expected a date-time string"),
    ("observation", {"code": "2345-7"}, "Observation/o1: code is a string, expected an object"),
    ("observation", {"code": {"coding": ["2345-7"]}}, "Observation/o1: code.coding[0] is a string, expected an object"),
    ("observation", {"valueQuantity": "88 mg/dL"}, "Observation/o1: valueQuantity is a string, expected an object"),
    ("observation", {"valueQuantity": {"value": "88"}},
     "Observation/o1: valueQuantity.value is a string, expected a number"),
    ("observation", {"valueQuantity": None, "valueString": {"text": "x"}},
     "Observation/o1: valueString is an object, expected a string"),
    ("observation", {"interpretation": [{"coding": [{"code": 1}]}]},
     "Observation/o1: interpretation[0].coding[0].code is a number, expected a string"),
    ("observation", {"referenceRange": [{"low": {"value": [70]}}]},
     "Observation/o1: referenceRange[0].low.value is an array, expected a number"),
    ("observation", {"note": "fasting"}, "Observation/o1: note is a string, expected an array"),
    ("patient", {"telecom": "+15550003333"}, "Patient/p1: telecom is a string, expected an array"),
    ("patient", {"telecom": [{"system": "phone", "value": 15550003333}]},
     "Patient/p1: telecom[0].value is a number, expected a string"),
    ("patient", {"identifier": {"value": "MRN-P1"}}, "Patient/p1: identifier is an object, expected an array"),
    ("patient", {"extension": [{"url": "https://drdangslab.com/fhir/StructureDefinition/sms-consent",
                                "valueBoolean": "false"}]},
     "Patient/p1: extension[0].valueBoolean is a string, expected a boolean"),
])
def test_a_wrong_json_type_dead_letters_the_report_with_the_element_named(culprit: str, change: dict[str, Any],
                                                                           reason: str) -> None:
    resources = {"report": report(), "observation": observation(), "patient": patient()}
    resources[culprit].update(change)
    good = report("r2", ("o2",), subject={"reference": "Patient/p2"})  # the next report, another patient
    out = mapped(bundle(resources["report"], good, resources["observation"], observation("o2"), resources["patient"],
                        patient(id="p2")))
    [dead] = dead_letters(out)
    assert str(dead.error) == f"DiagnosticReport/r1/_history/1: {reason}"
    assert_no_phi(str(dead.error))
    carried = [e["resource"]["resourceType"] for e in json.loads(dead.payload)["entry"]]
    assert carried[:1] == ["DiagnosticReport"] and ("Patient" in carried) == (culprit == "patient")
    assert dead.key == b"ACC-r1"
    assert [r.value["accession"] for r in out if isinstance(r, SourceRecord) and r.topic == "lab-reports"] == \
        ["ACC-r2"]


def test_a_report_whose_id_or_meta_has_the_wrong_type_is_dead_lettered_not_a_crash() -> None:
    out = mapped(bundle(report(id=17), report("r2", meta="yesterday"), observation(), patient()))
    assert [str(d.error) for d in dead_letters(out)] == [
        "a DiagnosticReport: id is a number, expected a string",
        "DiagnosticReport/r2: meta is a string, expected an object"]
    assert not [r for r in out if isinstance(r, SourceRecord)]


def test_a_malformed_entry_read_again_by_the_next_search_is_not_dead_lettered_again() -> None:
    m = mapper()
    page = bundle(report(), observation(), patient(), raw_entries=(["not", "a", "resource"],))
    assert len(dead_letters(mapped(page, m))) == 1
    assert dead_letters(mapped(page, m)) == []
    m.reset()  # an aborted batch: its dead letters were not stored
    assert len(dead_letters(mapped(page, m))) == 1


def test_a_bundle_whose_entry_or_link_is_not_an_array_is_a_retriable_error_that_says_so() -> None:
    with pytest.raises(RetriableError, match=r"Bundle.entry is an object, expected an array"):
        serve({"resourceType": "Bundle", "entry": {"resource": report()}}).next_page()
    with pytest.raises(RetriableError, match=r"Bundle.link\[0\] is a string, expected an object"):
        serve({"resourceType": "Bundle", "entry": [], "link": [BASE + "/next"]}).next_page()


def test_no_element_of_any_resource_of_the_wrong_type_escapes_the_mapping() -> None:
    """Every element of a good page replaced in turn by a value of each other JSON kind: the
    result is records that serialize, or dead letters with a specific reason; never an
    exception out of poll."""
    serde = SingleObjectSerde()
    provider = {"url": "https://drdangslab.com/fhir/StructureDefinition/ordering-provider",
                "valueIdentifier": {"value": "N1"}}
    rich_report = report(effectiveDateTime="2026-01-01T10:00:00Z", extension=[provider])
    coded = observation(valueQuantity=None, valueCodeableConcept={"coding": [{"system": "s", "code": "x"}]},
                        note=[{"text": "n"}], effectiveDateTime="2026-01-01T10:00:00Z",
                        referenceRange=[{"low": {"value": 1}, "high": {"value": 2}}])
    rich_patient = patient(communication=[{"language": {"coding": [{"code": "es"}]}, "preferred": True}])
    rich_patient["extension"].append({"url": "http://hl7.org/fhir/StructureDefinition/tz-code", "valueCode": "UTC"})
    good = bundle(rich_report, coded, rich_patient, observation("o2"),
                  observation("o3", referenceRange=[{"text": "t"}]))
    good["entry"][0]["resource"]["result"] += [{"reference": "Observation/o2"}, {"reference": "Observation/o3"}]
    assert [r.topic for r in mapped(good)] == ["patients"] + ["lab-results"] * 3 + ["lab-reports"]
    paths = [p for p in _paths(good) if p[0] == "entry" and len(p) > 1]  # a Bundle that is not one: see the test above
    assert len(paths) > 100
    for path in paths:
        for wrong in ("text", 7, 1.5, True, None, [], ["x"], {}, {"a": "b"}):
            page = copy.deepcopy(good)
            _set(page, path, wrong)
            for record in mapped(page):
                if isinstance(record, DeadLetter):
                    assert_no_phi(str(record.error))
                    assert "mapping failed" not in str(record.error), (path, wrong)
                else:
                    serde.encode(record.topic, record.schema, record.value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield prefix + (key,)
        yield from _paths(item, prefix + (key,))


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


# -- patient identifier mismatch ------------------------------------------------------------------------------

def test_a_page_dead_lettered_for_the_patient_identifier_names_the_setting_to_check(
        caplog: pytest.LogCaptureFixture) -> None:
    page = bundle(report(), report("r2"), observation(), patient())
    with caplog.at_level(logging.WARNING, logger="connectors.source_lis.fhir_mapping"):
        out = mapped(page, mapper(patient_id_type="PI"))
    assert [str(d.error) for d in dead_letters(out)] == [
        f"DiagnosticReport/{r}/_history/1: Patient/p1 has no identifier of type PI (PATIENT_ID_TYPE; "
        "PATIENT_ID_SYSTEM unset)" for r in ("r1", "r2")]
    [line] = [r.getMessage() for r in caplog.records]
    assert "all 2 reports" in line and "PATIENT_ID_TYPE" in line
    assert "types seen: MR, SS" in line and "urn:oid:1.2.3.4" in line
    assert_no_phi(line)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="connectors.source_lis.fhir_mapping"):
        mapped(page, mapper(patient_id_system="urn:oid:9.9"))
    assert "system urn:oid:9.9 (PATIENT_ID_SYSTEM)" in caplog.records[0].getMessage()


def test_a_page_with_one_good_report_logs_no_identifier_warning(caplog: pytest.LogCaptureFixture) -> None:
    other = patient(id="p2", identifier=[{"type": {"coding": [{"code": "SS"}]}, "value": "999-00-0001"}])
    page = bundle(report(), report("r2", subject={"reference": "Patient/p2"}), observation(), patient(), other)
    with caplog.at_level(logging.WARNING, logger="connectors.source_lis.fhir_mapping"):
        out = mapped(page)
    assert len(dead_letters(out)) == 1 and not caplog.records


def test_a_subject_missing_from_the_page_is_named_as_such() -> None:
    [dead] = dead_letters(mapped(bundle(report(), observation())))
    assert str(dead.error) == "DiagnosticReport/r1/_history/1: subject Patient/p1 is not included in the page"


# -- value types ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "result_value", "unit", "metadata"), [
    ({"valueQuantity": {"value": 5.4, "comparator": "<", "unit": "mmol/L"}}, "<5.4", "mmol/L",
     {"value_type": "Quantity"}),
    ({"valueString": "hemolysed, see note"}, "hemolysed, see note", None, {"value_type": "string"}),
    ({"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009",
                                           "display": "Negative"}]}},
     "Negative", None, {"value_type": "CodeableConcept", "value_code": "260385009",
                        "value_system": "http://snomed.info/sct"}),
    ({"valueCodeableConcept": {"text": "not detected"}}, "not detected", None, {"value_type": "CodeableConcept"}),
    ({"valueInteger": 3}, "3", None, {"value_type": "integer"}),
    ({"valueBoolean": False}, "false", None, {"value_type": "boolean"}),
    ({"valueDateTime": "2026-01-01T08:00:00Z"}, "2026-01-01T08:00:00Z", None, {"value_type": "dateTime"}),
    ({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}, "1:128", None,
     {"value_type": "Ratio"}),
    ({}, "", None, {}),
])
def test_value_type_is_recorded_and_a_coded_value_keeps_code_and_system(value: dict[str, Any], result_value: str,
                                                                       unit: str | None,
                                                                       metadata: dict[str, str]) -> None:
    obs = observation()
    del obs["valueQuantity"]
    obs.update(value)
    [result] = [r.value for r in mapped(bundle(report(), obs, patient())) if r.topic == "lab-results"]
    assert (result["result_value"], result["unit"], result["metadata"]) == (result_value, unit, metadata)


def test_an_entered_in_error_observation_carries_no_value_flag_or_critical() -> None:
    obs = observation(status="entered-in-error", interpretation=[{"coding": [{"code": "HH"}]}],
                      note=[{"text": "wrong patient"}])
    out = mapped(bundle(report(status="corrected"), obs, patient()))
    [result] = [r.value for r in out if r.topic == "lab-results"]
    assert (result["result_value"], result["unit"], result["abnormal_flag"], result["metadata"]) == \
        ("", None, None, {"note": "wrong patient"})
    assert [r.value["critical"] for r in out if r.topic == "lab-reports"] == [False]


# -- contacts -------------------------------------------------------------------------------------------------

def test_a_patient_without_telecom_clears_phone_and_email_and_lists_nothing_unknown() -> None:
    [contact] = [r.value for r in mapped(bundle(report(), observation(), patient(telecom=[])))
                 if r.topic == "patients"]
    assert (contact["phone"], contact["email"], contact["unknown_fields"]) == (None, None, [])
    no_element = patient()
    del no_element["telecom"]
    [contact] = [r.value for r in mapped(bundle(report(), observation(), no_element)) if r.topic == "patients"]
    assert (contact["phone"], contact["email"], contact["unknown_fields"]) == (None, None, [])


def test_a_patient_with_telecom_is_complete() -> None:
    [contact] = [r.value for r in mapped(bundle(report(), observation(), patient())) if r.topic == "patients"]
    assert (contact["phone"], contact["email"], contact["sms_consent"], contact["unknown_fields"]) == \
        ("+15550003333", "chloe@example.org", True, [])


# -- timeouts -------------------------------------------------------------------------------------------------

def test_a_timeout_says_timed_out_and_a_refused_connection_says_unreachable() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RetriableError, match=r"^FHIR request timed out: ReadTimeout after 5s \(FHIR_TIMEOUT_S\)$"):
        poller(timeout).next_page()
    with pytest.raises(RetriableError, match="unreachable"):
        poller(refused).next_page()


def test_a_page_that_trickles_in_is_cut_off_at_the_deadline() -> None:
    def trickle() -> Iterator[bytes]:
        yield b'{"resourceType": "Bundle", "entry": ['
        for _ in range(1000):
            time.sleep(0.01)
            yield b" "
        yield b"]}"

    slow = poller(lambda request: httpx.Response(200, content=trickle()), deadline_s=0.2)
    started = time.monotonic()
    with pytest.raises(RetriableError, match=r"timed out: the page was not complete after 0.2s"):
        slow.next_page()
    assert time.monotonic() - started < 1.0


def test_a_real_server_trickling_bytes_cannot_hold_a_poll_past_the_deadline() -> None:
    """Over a socket: every byte comes well within the read timeout, the whole page never does."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve_slowly() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=serve_slowly, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}/fhir"
    client = make_http_client(base_url=base, timeout_s=1.0)
    slow = FhirPoller(base_url=base, client=client, page_size=10, overlap_ms=0, cursor=FhirCursor(), deadline_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RetriableError, match="timed out"):
            slow.next_page()
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        client.close()
        listener.close()
        thread.join(5)

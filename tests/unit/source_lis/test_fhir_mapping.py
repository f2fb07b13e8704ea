"""FHIR resources -> events; bad reports -> one DeadLetter each, without PHI."""

from __future__ import annotations

import json
from dataclasses import replace

from common.records import DeadLetter
from connectors.source_lis.window import ReplayWindow
from devstack.lis_simulator import generate
from tests.unit.source_lis.conftest import drain
from tests.unit.source_lis.fake_runtime import FakeRuntime

T0 = 1_767_225_600_000


def _one_report(sim, fhir_task, **changes):  # type: ignore[no-untyped-def]
    version = replace(generate(seed=5, reports=1, preliminary_share=0, correction_share=0, cancel_share=0)[0],
                      **changes)
    sim.publish(version)
    runtime = FakeRuntime(fhir_task()).start()
    drain(runtime)
    return version, runtime


def test_report_maps_to_patient_results_and_report_in_that_order(sim, fhir_task) -> None:
    version, runtime = _one_report(sim, fhir_task)
    topics = [r.topic for r in runtime.records]
    assert topics == ["patients"] + ["lab-results"] * version.result_count + ["lab-reports"]
    assert {r.key for r in runtime.records} == {version.patient.mrn}
    report = runtime.records[-1].value
    assert (report["accession"], report["test_code"], report["report_status"], report["event_type"],
            report["result_count"], report["ordering_provider_id"], report["source_message_id"]) == \
        (version.accession, version.code, "final", "REPORT_FINAL", version.result_count, version.provider,
         f"DiagnosticReport/{version.id}/_history/1")
    first = runtime.records[1].value
    expected = version.results[0]
    assert (first["test_id"], first["loinc_code"], first["unit"], first["abnormal_flag"], first["status"],
            first["result_status"], first["report_status"]) == \
        (expected.code, expected.code, expected.unit, expected.flag, "VERIFIED", "final", "final")
    assert float(first["result_value"]) == float(expected.value)
    assert first["timestamp"] == version.updated_ms and first["observed_time"] == version.effective_ms


def test_patient_contact_carries_consent_and_time_zone(sim, fhir_task) -> None:
    version, runtime = _one_report(sim, fhir_task)
    contact = runtime.records[0].value
    p = version.patient
    assert (contact["phone"], contact["email"], contact["sms_consent"], contact["email_consent"],
            contact["time_zone"], contact["language"]) == \
        (p.phone, p.email, p.sms_consent, p.email_consent, p.time_zone, p.language)
    for record in runtime.records[1:]:
        assert p.email is None or p.email not in json.dumps(record.value)


def test_critical_flag_marks_the_report(sim, fhir_task) -> None:
    base = generate(seed=5, reports=1, preliminary_share=0, correction_share=0, cancel_share=0)[0]
    results = (replace(base.results[0], flag="HH"),) + base.results[1:]
    _, runtime = _one_report(sim, fhir_task, results=results)
    assert runtime.records[-1].value["critical"] is True


def test_unknown_status_and_missing_patient_id_are_dead_lettered_and_the_stream_goes_on(sim, fhir_task) -> None:
    sim.publish(generate(seed=5, reports=3, preliminary_share=0, correction_share=0, cancel_share=0))
    sim.publish_malformed("bad-1", T0 + 1, "unknown-status")
    sim.publish_malformed("bad-2", T0 + 2, "no-patient-id")
    runtime = FakeRuntime(fhir_task()).start()
    drain(runtime)
    assert len(runtime.dead) == 2
    assert set(runtime.event_ids()) == sim.expected_event_ids()
    for dead in runtime.dead:
        assert isinstance(dead, DeadLetter)
        message = str(dead.error)
        assert message.startswith("DiagnosticReport/bad-")
        assert dead.key is not None and dead.key.startswith(b"BAD")
        bundle = json.loads(dead.payload)
        assert bundle["entry"][0]["resource"]["id"].startswith("bad-")
        for phi in ("MRN", "@", "+1555", "Smith", "value"):
            assert phi not in message


def test_replay_window_ends_adds_the_header_and_filters_topics(sim, fhir_task) -> None:
    versions = generate(seed=6, reports=40, preliminary_share=0, correction_share=0, cancel_share=0)
    sim.publish(versions)
    window = ReplayWindow(versions[10].updated_ms, versions[30].updated_ms, frozenset({"lab-reports"}))
    task = fhir_task(replay=window)
    from io import StringIO

    task.progress.stream = StringIO()
    runtime = FakeRuntime(task).start()
    for _ in range(100):
        runtime.step()
        if task.done():
            break
    assert task.done()
    inside = {v.accession for v in versions if window.since_ms <= v.updated_ms < window.until_ms}
    assert {r.value["accession"] for r in runtime.records} == inside
    assert {r.topic for r in runtime.records} == {"lab-reports"}
    assert all(("replay", b"true") in r.headers for r in runtime.records)
    assert "records" in task.progress.stream.getvalue() and "100.0%" in task.progress.stream.getvalue()


def _report(rid: str, results: list[str]) -> dict:
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "meta": {"versionId": "1", "lastUpdated": "2026-01-01T12:00:00Z"},
            "identifier": [{"type": {"coding": [{"code": "FILL"}]}, "value": f"ACC-{rid}"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/p1"}, "result": [{"reference": r} for r in results]}


def test_contact_of_a_dead_lettered_report_is_sent_with_the_next_good_one() -> None:
    from connectors.source_lis.fhir_client import FhirPage
    from connectors.source_lis.fhir_mapping import FhirMapper

    patient = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
               "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-P1"}],
               "telecom": [{"system": "phone", "value": "+15550003333", "use": "mobile"}]}
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "valueQuantity": {"value": 88}}
    mapper = FhirMapper(source="lis", results_topic="lab-results", reports_topic="lab-reports",
                        patients_topic="patients", patient_id_type="MR", patient_id_system=None,
                        partition={"lis": "lis", "mode": "fhir"})
    page = FhirPage(reports=[_report("r1", ["Observation/missing"]), _report("r2", ["Observation/o1"])],
                    included={"Patient/p1": patient, "Observation/o1": obs}, offset={}, last_page=True)
    out = mapper.map_page(page)
    assert isinstance(out[0], DeadLetter)
    assert [r.topic for r in out[1:]] == ["patients", "lab-results", "lab-reports"]
    again = mapper.map_page(FhirPage(reports=[_report("r3", ["Observation/o1"])], included=page.included,
                                     offset={}, last_page=True))
    assert [r.topic for r in again] == ["lab-results", "lab-reports"]  # sent once it was written

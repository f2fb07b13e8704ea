"""ORU^R01 -> events: patient id by type/authority, per-report events, deterministic ids."""

from __future__ import annotations

import pytest

from connectors.source_lis.hl7_mapping import Hl7ContentError, Hl7Mapper
from connectors.source_lis.hl7_parser import parse_oru
from tests.unit.source_lis.hl7_samples import oru, oru_two_patients


def mapper(**overrides: object) -> Hl7Mapper:
    values: dict = dict(source="lis", results_topic="lab-results", reports_topic="lab-reports",
                        patients_topic="patients", patient_id_type="MR", patient_id_system=None)
    values.update(overrides)
    return Hl7Mapper(**values)


def records(text: str, m: Hl7Mapper | None = None) -> list:
    return (m or mapper()).map(parse_oru(text), {"lis": "lis", "sender": "LIS|MAINLAB"}, {}, [])


def test_one_report_event_per_obr_and_one_result_per_obx_keyed_by_patient() -> None:
    out = records(oru())
    assert [r.topic for r in out] == ["patients", "lab-results", "lab-results", "lab-results", "lab-reports",
                                      "lab-results", "lab-reports"]
    assert {r.key for r in out} == {"MRN0000042"}
    cbc = out[4].value
    assert (cbc["event_type"], cbc["report_status"], cbc["accession"], cbc["result_count"], cbc["critical"]) == \
        ("REPORT_FINAL", "final", "ACC1", 3, True)
    assert cbc["ordering_provider_id"] == "NPI1234"
    assert cbc["metadata"] == {"note": "Sample drawn at home visit"}
    assert out[6].value["critical"] is False


def test_result_fields() -> None:
    hb = records(oru())[2].value
    assert {k: hb[k] for k in ("test_id", "test_name", "result_value", "unit", "reference_range", "abnormal_flag",
                               "status", "result_status", "loinc_code", "source_message_id", "event_type")} == {
        "test_id": "718-7", "test_name": "Hemoglobin", "result_value": "6.1", "unit": "g/dL",
        "reference_range": "12.0-17.5", "abnormal_flag": "LL", "status": "VERIFIED", "result_status": "F",
        "loinc_code": "718-7", "source_message_id": "MSG001", "event_type": "LAB_RESULT_CREATED"}
    assert hb["timestamp"] == 1767268500000  # OBR-22
    assert hb["observed_time"] == 1767263400000  # OBX-14
    assert "read back" in hb["metadata"]["note"]


def test_contact_details_and_consent_only_on_the_patients_topic() -> None:
    out = records(oru())
    contact = out[0].value
    assert (contact["phone"], contact["email"], contact["sms_consent"], contact["email_consent"],
            contact["time_zone"], contact["language"]) == \
        ("+15550001111", "chloe@example.org", True, False, "America/Chicago", "es")
    for r in out[1:]:
        assert "+15550001111" not in repr(r.value) and "chloe@" not in repr(r.value)


def test_unchanged_contact_is_not_sent_again() -> None:
    m = mapper()
    assert records(oru("A"), m)[0].topic == "patients"
    assert records(oru("B"), m)[0].topic != "patients"


def test_patient_id_is_chosen_by_type_not_position() -> None:
    swapped = "MRN0000042^^^LAB&1.2.3.4&ISO^MR~999-00-0000^^^SSA^SS"
    assert {r.key for r in records(oru(pid3=swapped))} == {"MRN0000042"}
    assert {r.key for r in records(oru(), mapper(patient_id_type="SS"))} == {"999-00-0000"}


def test_patient_id_by_assigning_authority() -> None:
    assert {r.key for r in records(oru(), mapper(patient_id_system="1.2.3.4"))} == {"MRN0000042"}
    assert {r.key for r in records(oru(), mapper(patient_id_system="SSA"))} == {"999-00-0000"}


def test_missing_patient_id_is_a_content_error_without_phi() -> None:
    with pytest.raises(Hl7ContentError) as info:
        records(oru("C7", pid3="999-00-0000^^^SSA^SS"))
    assert "C7" in str(info.value) and "999" not in str(info.value)


def test_unknown_status_codes_are_content_errors() -> None:
    with pytest.raises(Hl7ContentError, match="OBR-25"):
        records(oru(obr25="Q"))
    with pytest.raises(Hl7ContentError, match="OBX-11"):
        records(oru(obx11="Q"))


def test_resent_message_maps_to_the_same_event_ids() -> None:
    first = [r.value.get("event_id") for r in records(oru("M1"))[1:]]
    again = [r.value.get("event_id") for r in records(oru("M1-resent"))[1:]]
    assert first == again


def test_preliminary_final_and_correction_get_distinct_ids() -> None:
    ids = [{r.value["event_id"] for r in records(oru(obr25=s, obx11=s)) if r.topic != "patients"}
           for s in ("P", "F", "C")]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]
    prelim = records(oru(obr25="P", obx11="P"))
    assert prelim[1].value["status"] == "PENDING" and prelim[4].value["event_type"] == "REPORT_PRELIMINARY"


def test_cancelled_order_without_results() -> None:
    text = "\r".join(s for s in oru(obr25="X", second_order=False).split("\r") if not s.startswith(("OBX", "NTE")))
    out = records(text)
    assert [r.topic for r in out] == ["patients", "lab-reports"]
    assert out[1].value["event_type"] == "REPORT_CANCELLED" and out[1].value["result_count"] == 0


def test_each_patient_group_is_mapped_to_its_own_patient() -> None:
    out = records(oru_two_patients())
    assert [(r.topic, r.key) for r in out] == [
        ("patients", "MRN-A1"), ("lab-results", "MRN-A1"), ("lab-reports", "MRN-A1"),
        ("patients", "MRN-B2"), ("lab-results", "MRN-B2"), ("lab-reports", "MRN-B2")]
    assert [r.value["patient_id"] for r in out] == ["MRN-A1"] * 3 + ["MRN-B2"] * 3
    assert (out[1].value["accession"], out[4].value["accession"]) == ("ACC-A", "ACC-B")
    assert [(out[i].value["phone"], out[i].value["time_zone"]) for i in (0, 3)] == [
        ("+15550001111", "America/Chicago"), ("+15550002222", "Europe/Berlin")]


def test_a_patient_group_without_the_configured_id_is_a_content_error() -> None:
    text = oru_two_patients("MULTI3").replace("MRN-A1^^^LAB&1.2.3.4&ISO^MR", "999-00-0000^^^SSA^SS")
    with pytest.raises(Hl7ContentError) as info:
        records(text)
    assert "MULTI3" in str(info.value) and "999" not in str(info.value)


def test_contact_of_a_dead_lettered_message_is_sent_with_the_next_good_one() -> None:
    m = mapper()
    with pytest.raises(Hl7ContentError):
        records(oru("BAD1", obx11="Q"), m)  # fails after the contact was built
    assert records(oru("GOOD1"), m)[0].topic == "patients"


def test_contacts_can_be_left_out() -> None:
    assert "patients" not in {r.topic for r in records(oru(), mapper(emit_contacts=False))}


PHONE, EMAIL = "^PRN^CP^^^^^^^^^+15550001111", "^NET^Internet^chloe@example.org"


def contact_message(control_id: str, pid13: str, *, zpc: str = "ZPC|1|Y|N|America/Chicago") -> str:
    """oru() with PID-13 (PID-14 empty) and the ZPC segment replaced."""
    lines = oru(control_id).split("\r")
    pid = lines[1].split("|")
    pid[13] = pid13
    lines[1], lines[2] = "|".join(pid), zpc
    return "\r".join(lines)


def contacts(text: str, m: Hl7Mapper) -> list[dict]:
    return [r.value for r in records(text, m) if r.topic == "patients"]


def test_a_message_without_pid13_and_pid14_leaves_phone_and_email_unknown_not_removed() -> None:
    [contact] = contacts(contact_message("N1", ""), mapper())
    assert (contact["phone"], contact["email"], contact["unknown_fields"]) == (None, None, ["phone", "email"])


def test_a_missing_field_changes_nothing_so_no_contact_is_sent() -> None:
    m = mapper()
    [first] = contacts(contact_message("M1", f"{PHONE}~{EMAIL}"), m)
    assert (first["phone"], first["email"], first["unknown_fields"]) == ("+15550001111", "chloe@example.org", [])
    assert contacts(contact_message("M2", ""), m) == []  # PID-13 absent: what consumers hold stays
    assert contacts(contact_message("M3", PHONE), m) == []  # the phone again, the e-mail not carried
    assert contacts(contact_message("M4", f"{PHONE}~{EMAIL}"), m) == []


def test_a_change_beside_missing_fields_is_sent_with_them_listed_as_unknown() -> None:
    m = mapper()
    contacts(contact_message("C1", f"{PHONE}~{EMAIL}"), m)
    [update] = contacts(contact_message("C2", "", zpc="ZPC|1|N|N|America/Chicago"), m)
    assert (update["phone"], update["email"], update["sms_consent"], update["unknown_fields"]) == \
        (None, None, False, ["phone", "email"])
    [changed] = contacts(contact_message("C3", "^PRN^CP^^1^555^0002222"), m)  # a new number; e-mail not carried
    assert (changed["phone"], changed["email"], changed["unknown_fields"]) == ("+15550002222", None, ["email"])


def test_an_explicit_hl7_delete_removes_phone_and_email() -> None:
    m = mapper()
    contacts(contact_message("D1", f"{PHONE}~{EMAIL}"), m)
    [removed] = contacts(contact_message("D2", '""'), m)
    assert (removed["phone"], removed["email"], removed["unknown_fields"]) == (None, None, [])
    [email_only] = contacts(contact_message("D3", f'{PHONE}~^NET^Internet^""'), m)
    assert (email_only["phone"], email_only["email"], email_only["unknown_fields"]) == ("+15550001111", None, [])


def test_a_repeated_pid_without_telecom_does_not_erase_the_contact_of_the_first() -> None:
    lines = oru("REP1").split("\r")  # PID (with PID-13) OBR OBX ... then the same patient's PID again
    second_pid = lines[1].split("|")
    second_pid[13] = ""
    text = "\r".join(lines[:11] + ["|".join(second_pid), lines[2]] + lines[11:])  # PID, its ZPC, ORC OBR OBX
    out = records(text)
    assert [r.value["phone"] for r in out if r.topic == "patients"] == ["+15550001111"]
    assert [r.topic for r in out].count("lab-reports") == 2


def test_entered_in_error_results_carry_no_value_unit_flag_or_critical() -> None:
    out = records(oru("W1", obr25="C", obx11="W"))
    results = [r.value for r in out if r.topic == "lab-results"]
    assert {(r["result_value"], r["unit"], r["abnormal_flag"]) for r in results} == {("", None, None)}
    assert all("value_type" not in r["metadata"] for r in results)
    assert not any(r.value["critical"] for r in out if r.topic == "lab-reports")


def test_value_type_and_coded_values_in_metadata() -> None:
    text = oru().replace("OBX|1|NM|6690-2^WBC^LN||7.2|", "OBX|1|CWE|6690-2^WBC^LN||260385009^Negative^SCT|")
    results = [r.value for r in records(text) if r.topic == "lab-results"]
    assert results[0]["metadata"] == {"value_type": "CWE", "value_code": "260385009", "value_system": "SCT"}
    assert results[0]["result_value"] == "Negative"
    assert results[1]["metadata"]["value_type"] == "NM"


def test_missing_patient_id_names_the_setting_to_check() -> None:
    with pytest.raises(Hl7ContentError, match=r"type MR \(PATIENT_ID_TYPE"):
        records(oru("C8", pid3="999-00-0000^^^SSA^SS"))
    with pytest.raises(Hl7ContentError, match=r"assigning authority 9\.9\.9 \(PATIENT_ID_SYSTEM\)"):
        records(oru("C9"), mapper(patient_id_system="9.9.9"))

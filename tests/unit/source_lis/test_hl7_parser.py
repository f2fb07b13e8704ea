"""ORU^R01 parsing: groups, escapes, repeats, NTE, value types, ACKs, timestamps."""

from __future__ import annotations

import pytest

from connectors.source_lis.hl7_parser import Hl7Error, build_ack, parse_oru, parse_ts, read_header
from tests.unit.source_lis.hl7_samples import oru, oru_two_patients


def test_several_obr_groups_with_their_obx_and_nte() -> None:
    message = parse_oru(oru())
    assert (message.sending_app, message.sending_facility, message.control_id) == ("LIS", "MAINLAB", "MSG001")
    assert [o.filler for o in message.orders] == ["ACC1", "ACC2"]
    cbc = message.orders[0]
    assert (cbc.code, cbc.name, cbc.coding_system, cbc.status) == ("58410-2", "CBC panel", "LN", "F")
    assert cbc.status_changed == "20260101115500+0000"
    assert cbc.ordering_provider == "NPI1234"
    assert cbc.notes == ["Sample drawn at home visit"]
    assert [o.code for o in cbc.observations] == ["6690-2", "718-7", "777-3"]
    assert cbc.observations[0].notes == []
    assert len(message.orders[1].observations) == 1


def test_escape_sequences_are_resolved_per_component() -> None:
    message = parse_oru(oru())
    hb = message.orders[0].observations[1]
    assert hb.notes == ["Critical value called to Dr^Doe & read back\nsecond line"]
    assert (hb.value, hb.unit, hb.reference_range, hb.flag, hb.status) == ("6.1", "g/dL", "12.0-17.5", "LL", "F")


def test_structured_numeric_value_keeps_its_comparator() -> None:
    assert parse_oru(oru()).orders[0].observations[2].value == "<10"


def test_repeating_pid3_and_telecom_are_all_kept() -> None:
    patient = parse_oru(oru()).orders[0].patient
    assert [(i.value, i.authority, i.authority_id, i.type_code) for i in patient.identifiers] == [
        ("999-00-0000", "SSA", "", "SS"), ("MRN0000042", "LAB", "1.2.3.4", "MR")]
    assert patient.phones == [("+15550001111", "PRN", "CP")]
    assert patient.emails == ["chloe@example.org"]
    assert (patient.sms_consent, patient.email_consent, patient.time_zone, patient.language) == \
        (True, False, "America/Chicago", "es")


def test_each_order_belongs_to_the_patient_group_it_is_in() -> None:
    message = parse_oru(oru_two_patients())
    assert [(o.filler, o.patient.identifiers[0].value) for o in message.orders] == [
        ("ACC-A", "MRN-A1"), ("ACC-B", "MRN-B2")]
    assert [o.patient.phones[0][0] for o in message.orders] == ["+15550001111", "+15550002222"]
    assert [o.patient.time_zone for o in message.orders] == ["America/Chicago", "Europe/Berlin"]


def test_obx_after_a_new_pid_does_not_join_the_previous_patients_order() -> None:
    text = oru_two_patients("MULTI2").replace("OBR|1|PLACC-B|", "XXX|1|PLACC-B|")
    with pytest.raises(Hl7Error, match="OBX before any OBR"):
        parse_oru(text)


def test_custom_encoding_characters_from_msh2() -> None:
    msh, rest = oru().split("\r", 1)
    msh = msh.replace("^~\\&", "$@\\#", 1).replace("ORU^R01^ORU_R01", "ORU$R01$ORU_R01")
    text = msh + "\r" + rest.replace("^", "$").replace("~", "@").replace("&", "#")
    message = parse_oru(text)
    assert message.orders[0].code == "58410-2"
    assert message.orders[0].patient.identifiers[1].value == "MRN0000042"


def test_hex_escape_and_line_feed_segment_separators() -> None:
    text = oru().replace("Sample drawn at home visit", "caf\\XC3A9\\").replace("\r", "\n")
    assert parse_oru(text).orders[0].notes == ["cafÃ©"]  # \X..\ is bytes in the message's charset


@pytest.mark.parametrize(("text", "fragment"), [
    ("not hl7 at all", "MSH"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5.1\rPID|1||1^^^L^MR\r", "unsupported message type ADT^A01"),
    ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X2|P|2.5.1\rOBR|1||A1|x^y^LN\r", "no PID"),
    ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X3|P|2.5.1\rPID|1||1^^^L^MR\rOBX|1|NM|x^y^LN||1\r", "OBX before"),
    ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01||P|2.5.1\rPID|1\r", "MSH-10"),
    ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X4|P|2.5.1\rOBR|1||A1|x^y^LN\rPID|1||1^^^L^MR\r", "OBR with no PID"),
])
def test_unsupported_or_broken_messages_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(Hl7Error) as info:
        parse_oru(text)
    assert fragment in str(info.value)


def test_errors_name_the_control_id_not_patient_data() -> None:
    with pytest.raises(Hl7Error) as info:
        parse_oru(oru("CTRL9").replace("OBR|1|", "XXX|1|").replace("OBR|2|", "XXX|2|"))
    assert "CTRL9" in str(info.value)
    assert "Brien" not in str(info.value)


def test_ack_echoes_control_id_and_swaps_sender_and_receiver() -> None:
    ack = build_ack(read_header(oru("ABC123")), "AA")
    msh, msa = ack.strip("\r").split("\r")
    fields = msh.split("|")
    assert fields[2:6] == ["LABCONNECT", "DRDANG", "LIS", "MAINLAB"]
    assert fields[8] == "ACK^R01^ACK"
    assert msa == "MSA|AA|ABC123"


def test_ack_without_a_readable_header_is_still_valid() -> None:
    assert build_ack(None, "AR", "malformed").split("\r")[1] == "MSA|AR||malformed"


@pytest.mark.parametrize(("text", "ms"), [
    ("20260101120000+0000", 1767268800000), ("20260101070000-0500", 1767268800000),
    ("202601011200", 1767268800000), ("20260101120000.5+0000", 1767268800500), ("", None), ("garbage", None),
    ("20260101120000+2500", None), ("20260101120000-2400", None), ("20260101120000+0060", None),
])
def test_hl7_timestamps(text: str, ms: int | None) -> None:
    assert parse_ts(text) == ms


def _pid(pid13: str, pid14: str = "") -> str:
    """oru() with its PID-13/PID-14 replaced."""
    lines = oru().split("\r")
    pid = lines[1].split("|")
    pid[13], pid[14] = pid13, pid14
    lines[1] = "|".join(pid)
    return "\r".join(lines)


@pytest.mark.parametrize(("xtn", "number"), [
    ("^PRN^CP^^1^555^0001111", "+15550001111"),  # XTN-5 country, XTN-6 area, XTN-7 local
    ("^PRN^CP^^+1^(555)^000-1111", "+15550001111"),  # punctuation is dropped
    ("^PRN^CP^^0049^30^1234567", "+49301234567"),  # an international prefix is not part of the code
    ("^PRN^PH^^^555^0001111", "5550001111"),  # no country code: no "+", not made up
    ("^WPN^PH^^1^555^0001111^42", "+15550001111;ext=42"),  # XTN-8 extension, RFC 3966
    ("^PRN^CP^^1^555^0009999^^^^^+15550001111", "+15550001111"),  # XTN-12 first
    ("(555)000-1111^PRN^PH", "(555)000-1111"),  # the deprecated XTN-1 when nothing else
    ("(555)000-1111^WPN^PH^^^^^7", "(555)000-1111;ext=7"),
])
def test_xtn_phone_number_from_its_components(xtn: str, number: str) -> None:
    patient = parse_oru(_pid(xtn)).orders[0].patient
    assert [p[0] for p in patient.phones] == [number]
    assert patient.carries_phone and not patient.carries_email


def test_absent_telecom_fields_carry_nothing() -> None:
    patient = parse_oru(_pid("", "")).orders[0].patient
    assert (patient.phones, patient.emails, patient.carries_phone, patient.carries_email) == ([], [], False, False)
    no_number = parse_oru(_pid("^PRN^CP")).orders[0].patient  # a use code without any number
    assert (no_number.phones, no_number.carries_phone) == ([], False)


@pytest.mark.parametrize(("pid13", "pid14", "phone", "email"), [
    ('""', "", True, True),  # the whole field deleted: its phones and e-mails
    ("", '""', True, True),
    ('^PRN^CP^^^^""', "", True, False),  # the local number deleted
    ('""^PRN^PH', "", True, False),
    ('^NET^Internet^""', "", False, True),  # the e-mail address deleted
])
def test_explicit_hl7_delete_carries_a_removal(pid13: str, pid14: str, phone: bool, email: bool) -> None:
    patient = parse_oru(_pid(pid13, pid14)).orders[0].patient
    assert (patient.phones, patient.emails) == ([], [])
    assert (patient.carries_phone, patient.carries_email) == (phone, email)


def test_coded_value_keeps_its_code_and_coding_system() -> None:
    text = oru().replace("OBX|1|NM|6690-2^WBC^LN||7.2|", "OBX|1|CWE|6690-2^WBC^LN||260385009^Negative^SCT|")
    wbc = parse_oru(text).orders[0].observations[0]
    assert (wbc.value, wbc.value_code, wbc.value_system) == ("Negative", "260385009", "SCT")

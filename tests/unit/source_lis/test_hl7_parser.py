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

"""ACKs: MSH-9 echoes the trigger, AE and AR always carry an ERR segment (HL7 table 0357)."""

from __future__ import annotations

from connectors.source_lis.hl7_ack import (
    APPLICATION_INTERNAL_ERROR,
    UNSUPPORTED_MESSAGE_TYPE,
    AckError,
    build_ack,
)
from connectors.source_lis.hl7_parser import read_header
from tests.unit.source_lis.hl7_samples import oru

ADT = "MSH|^~\\&|ADT1|HOSP|LABCONNECT|DRDANG|20260101120000||ADT^A01^ADT_A01|ADT7|P|{version}\rPID|1\r"


def _segments(ack: str) -> list[list[str]]:
    return [s.split("|") for s in ack.strip("\r").split("\r")]


def test_aa_for_an_oru_has_no_err() -> None:
    msh, msa = _segments(build_ack(read_header(oru("ABC123")), "AA"))
    assert msh[2:6] == ["LABCONNECT", "DRDANG", "LIS", "MAINLAB"] and msh[8] == "ACK^R01^ACK"
    assert msa == ["MSA", "AA", "ABC123"]


def test_ar_for_a_non_oru_echoes_its_trigger_and_names_the_error() -> None:
    error = AckError(UNSUPPORTED_MESSAGE_TYPE, "message ADT7: unsupported message type ADT^A01")
    msh, msa, err = _segments(build_ack(read_header(ADT.format(version="2.5.1")), "AR", error))
    assert msh[8] == "ACK^A01^ACK"
    assert msa[:3] == ["MSA", "AR", "ADT7"]
    assert err[3] == "200^Unsupported message type^HL70357" and err[4] == "E"
    assert err[8] == "message ADT7: unsupported message type ADT A01", "the text holds no delimiters"


def test_before_v2_5_the_error_goes_into_err_1() -> None:
    error = AckError(UNSUPPORTED_MESSAGE_TYPE, "unsupported")
    *_, err = _segments(build_ack(read_header(ADT.format(version="2.3.1")), "AR", error))
    assert err == ["ERR", "^^^200&Unsupported message type&HL70357"]


def test_ae_and_ar_always_carry_err() -> None:
    for code in ("AE", "AR"):
        *_, err = _segments(build_ack(read_header(oru("X1")), code))
        assert err[0] == "ERR" and err[3] == "207^Application internal error^HL70357"


def test_an_ack_without_a_readable_header_is_still_valid() -> None:
    msh, msa, err = _segments(build_ack(None, "AR", AckError(APPLICATION_INTERNAL_ERROR, "no MSH")))
    assert msh[8] == "ACK" and msa == ["MSA", "AR", "", "no MSH"] and err[8] == "no MSH"

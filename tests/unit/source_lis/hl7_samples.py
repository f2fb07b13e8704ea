"""Hand-written ORU^R01 messages for the HL7 tests (fictional patients)."""

from __future__ import annotations


def oru(control_id: str = "MSG001", *, app: str = "LIS", facility: str = "MAINLAB", obr25: str = "F",
        obx11: str = "F", pid3: str = "999-00-0000^^^SSA^SS~MRN0000042^^^LAB&1.2.3.4&ISO^MR",
        second_order: bool = True) -> str:
    segments = [
        f"MSH|^~\\&|{app}|{facility}|LABCONNECT|DRDANG|20260101120000+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{pid3}||O\\T\\Brien^Chloé||19700101|F|||||^PRN^CP^^^^^^^^^+15550001111~^NET^Internet^chloe@example.org"
        "||es",
        "ZPC|1|Y|N|America/Chicago",
        "PV1|1|O",
        "ORC|RE|PL1|ACC1",
        f"OBR|1|PL1|ACC1^LAB|58410-2^CBC panel^LN|||20260101100000+0000|||||||||NPI1234^Doe^John||||||"
        f"20260101115500+0000|||{obr25}",
        "NTE|1|L|Sample drawn at home visit",
        f"OBX|1|NM|6690-2^WBC^LN||7.2|10*3/uL|4.5-11.0|N|||{obx11}|||20260101103000+0000",
        f"OBX|2|NM|718-7^Hemoglobin^LN||6.1|g/dL|12.0-17.5|LL|||{obx11}|||20260101103000+0000",
        "NTE|1|L|Critical value called to Dr\\S\\Doe \\T\\ read back\\.br\\second line",
        f"OBX|3|SN|777-3^Platelets^LN||<^10|10*3/uL|150-400|LL|||{obx11}",
    ]
    if second_order:
        segments += [
            "ORC|RE|PL2|ACC2",
            f"OBR|2|PL2|ACC2^LAB|2345-7^Glucose^LN|||20260101100000+0000|||||||||NPI1234^Doe^John||||||"
            f"20260101115500+0000|||{obr25}",
            f"OBX|1|NM|2345-7^Glucose^LN||88|mg/dL|70-99|N|||{obx11}",
        ]
    return "\r".join(segments) + "\r"


def oru_two_patients(control_id: str = "MULTI1") -> str:
    """Two patient groups in one ORU^R01: PID(A) OBR OBX, then PID(B) OBR OBX (fictional patients)."""
    return "\r".join([
        f"MSH|^~\\&|LIS|MAINLAB|LABCONNECT|DRDANG|20260101120000+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        "PID|1||MRN-A1^^^LAB&1.2.3.4&ISO^MR||Alpha^Ann||19700101|F|||||^PRN^CP^^^^^^^^^+15550001111",
        "ZPC|1|Y|N|America/Chicago",
        _obr("ACC-A", "2345-7^Glucose^LN"),
        "OBX|1|NM|2345-7^Glucose^LN||88|mg/dL|70-99|N|||F",
        "PID|2||MRN-B2^^^LAB&1.2.3.4&ISO^MR||Beta^Bob||19800101|M|||||^PRN^CP^^^^^^^^^+15550002222",
        "ZPC|1|N|N|Europe/Berlin",
        _obr("ACC-B", "4548-4^HbA1c^LN"),
        "OBX|1|NM|4548-4^HbA1c^LN||9.1|%|4.0-5.6|H|||F",
    ]) + "\r"


def _obr(accession: str, code: str) -> str:
    fields = ["OBR", "1", f"PL{accession}", f"{accession}^LAB", code] + [""] * 21
    fields[7], fields[22], fields[25] = "20260101100000+0000", "20260101115500+0000", "F"  # OBR-7, -22, -25
    return "|".join(fields)

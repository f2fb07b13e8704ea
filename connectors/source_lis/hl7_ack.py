"""HL7 ACKs: MSA with the acknowledgment code, and an ERR segment for every AE and AR;
and why a message is rejected (:class:`Rejected`, with its table 0357 code).

The ACK's MSH-9 echoes the trigger event it answers (``ACK^A01^ACK`` for an ADT^A01),
so a sender's engine can route it. ERR carries the HL7 error code (table 0357), the
severity and a short, PHI-free text: ERR-3/ERR-4/ERR-8 from v2.5 on, ERR-1 (the only
field before v2.5) for older versions. Texts come from our own errors, which name
MSH-10 and field names only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from connectors.source_lis.hl7_parser import Header, Hl7Error

# HL7 table 0357, message error condition codes (the ones this connector answers with).
SEGMENT_SEQUENCE_ERROR = (100, "Segment sequence error")
REQUIRED_FIELD_MISSING = (101, "Required field missing")
DATA_TYPE_ERROR = (102, "Data type error")
TABLE_VALUE_NOT_FOUND = (103, "Table value not found")
UNSUPPORTED_MESSAGE_TYPE = (200, "Unsupported message type")
UNSUPPORTED_EVENT_CODE = (201, "Unsupported event code")
APPLICATION_INTERNAL_ERROR = (207, "Application internal error")

_NO_HEADER = Header("|", "^~\\&", "", "", "", "", "", "", "2.5.1")
_TEXT_MAX = 200


class Rejected(Hl7Error):
    """Not a message this connector takes: AR, with ``condition`` (HL7 table 0357) in the ERR segment."""

    def __init__(self, text: str, condition: tuple[int, str]) -> None:
        super().__init__(text)
        self.condition = condition


class MessageTooLarge(Rejected):
    """Larger than a Kafka record can carry (dead-lettered without its body)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, APPLICATION_INTERNAL_ERROR)


def check_supported(header: Header) -> None:
    """Only ORU^R01 with a control id is taken; raises :class:`Rejected` naming why."""
    if not header.control_id:
        raise Rejected("MSH-10 message control id is empty", REQUIRED_FIELD_MISSING)
    if header.message_type != "ORU^R01":
        condition = UNSUPPORTED_EVENT_CODE if header.message_type.startswith("ORU^") else UNSUPPORTED_MESSAGE_TYPE
        raise Rejected(f"message {header.control_id}: unsupported message type {header.message_type or '<empty>'}",
                       condition)


def content_condition(error: BaseException) -> tuple[int, str]:
    """The table 0357 code of a mapping error (AE), from its PHI-free text, which names the field."""
    text = str(error)
    if "unsupported result status" in text:
        return TABLE_VALUE_NOT_FOUND
    if " time" in text:
        return DATA_TYPE_ERROR
    if " has no " in text:
        return REQUIRED_FIELD_MISSING
    return APPLICATION_INTERNAL_ERROR


@dataclass(frozen=True)
class AckError:
    """Why a message is answered AE or AR: a table 0357 code and a PHI-free text."""

    condition: tuple[int, str]
    text: str


def build_ack(header: Header | None, code: str, error: AckError | None = None, control_id: str = "ACK") -> str:
    """An ACK for ``header`` (or a bare one when the MSH was unreadable)."""
    if code != "AA" and error is None:
        error = AckError(APPLICATION_INTERNAL_ERROR, "message could not be processed")
    header = header or _NO_HEADER
    sep, comp = header.field_sep, header.encoding[0]
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    trigger = header.message_type.split("^")[1] if header.message_type.count("^") else ""
    message_type = comp.join(["ACK", trigger, "ACK"]) if trigger else "ACK"
    msh = sep.join(["MSH", header.encoding, header.receiving_app, header.receiving_facility, header.sending_app,
                    header.sending_facility, now, "", message_type, f"{control_id}-{header.control_id}", "P",
                    header.version or "2.5.1"])
    segments = [msh]
    text = _plain(error.text, header)[:80] if error else ""
    segments.append(sep.join(["MSA", code, header.control_id] + ([text] if text else [])))
    if error is not None:
        segments.append(_err(header, error))
    return "\r".join(segments) + "\r"


def _err(header: Header, error: AckError) -> str:
    sep, comp, sub = header.field_sep, header.encoding[0], header.encoding[3]
    number, name = error.condition
    text = _plain(error.text, header)[:_TEXT_MAX]
    if _before_v25(header.version):  # ERR-1 (ELD): segment^sequence^field^code&text&table
        return sep.join(["ERR", comp * 3 + sub.join([str(number), name, "HL70357"])])
    # ERR-1 empty, ERR-2 location unknown, ERR-3 code, ERR-4 severity, ERR-5..7 empty, ERR-8 user message
    return sep.join(["ERR", "", "", comp.join([str(number), name, "HL70357"]), "E", "", "", "", text])


def _plain(text: str, header: Header) -> str:
    """``text`` without the message's delimiters (it is ours: no escaping needed, just no structure)."""
    for ch in header.field_sep + header.encoding + "\r\n":
        text = text.replace(ch, " ")
    return text


def _before_v25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) < (2, 5)
    except ValueError:
        return False

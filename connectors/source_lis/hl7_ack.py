"""HL7 ACKs: MSA with the acknowledgment code, and an ERR segment for every AE and AR.

The ACK's MSH-9 echoes the trigger event it answers (``ACK^A01^ACK`` for an ADT^A01),
so a sender's engine can route it. ERR carries the HL7 error code (table 0357), the
severity and a short, PHI-free text: ERR-3/ERR-4/ERR-8 from v2.5 on, ERR-1 (the only
field before v2.5) for older versions. Texts come from our own errors, which name
MSH-10 and field names only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from connectors.source_lis.hl7_parser import Header

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

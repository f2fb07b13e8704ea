"""HL7 v2 ORU^R01 -> a neutral model (:class:`OruMessage`), and ACKs.

The grammar is small enough to parse directly: segments end in CR, the field
separator and encoding characters come from MSH-1/MSH-2, escape sequences
(``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\``) are resolved per component. An order
group is ``[ORC] OBR [NTE] {OBX [NTE]}``; NTE attaches to the OBX (or OBR) before
it. A message may carry several patient groups (``PID ... {order group}``): each
order keeps the patient of its own group. Errors raise :class:`Hl7Error` whose
message holds MSH-10 at most (no PHI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from common import PermanentError


class Hl7Error(PermanentError):
    """The message cannot be parsed or is not a supported ORU^R01 (answer AR)."""


@dataclass(frozen=True)
class Identifier:
    """One PID-3 repetition (CX): id, assigning authority (HD namespace / universal id), type."""

    value: str
    authority: str
    authority_id: str
    type_code: str


# HL7's explicit null: "the value is deleted", unlike an empty field ("not sent").
HL7_DELETE = '""'


@dataclass
class Hl7Patient:
    identifiers: list[Identifier]
    phones: list[tuple[str, str, str]] = field(default_factory=list)  # (number, use code, equipment type)
    emails: list[str] = field(default_factory=list)
    # Whether PID-13/14 said anything about a phone / an e-mail: a number or address, or an
    # explicit delete (""). Absent or empty fields carry nothing: the receiver keeps what it had.
    carries_phone: bool = False
    carries_email: bool = False
    language: str = ""
    # From the site's ZPC segment: consent and time zone are not in standard PID.
    sms_consent: bool = False
    email_consent: bool = False
    time_zone: str = ""


@dataclass
class Hl7Observation:
    set_id: str
    value_type: str
    code: str
    name: str
    coding_system: str
    sub_id: str
    value: str
    unit: str | None
    reference_range: str | None
    flag: str | None
    status: str
    observed: str
    notes: list[str] = field(default_factory=list)
    value_code: str = ""  # of a coded value (CWE and kin): OBX-5.1 and its coding system OBX-5.3
    value_system: str = ""


@dataclass
class Hl7Order:
    placer: str
    filler: str
    code: str
    name: str
    coding_system: str
    observed: str
    status_changed: str
    status: str
    ordering_provider: str | None
    patient: Hl7Patient  # of the patient group the OBR is in
    notes: list[str] = field(default_factory=list)
    observations: list[Hl7Observation] = field(default_factory=list)


@dataclass
class OruMessage:
    sending_app: str
    sending_facility: str
    control_id: str
    message_time: str
    message_type: str
    version: str
    orders: list[Hl7Order]  # each with its own patient: one message may carry several

    @property
    def sender(self) -> str:
        return f"{self.sending_app}|{self.sending_facility}"


@dataclass(frozen=True)
class Header:
    """What an ACK needs from MSH, readable even when the rest of the message is not."""

    field_sep: str
    encoding: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    control_id: str
    message_type: str
    version: str


_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


def read_header(text: str) -> Header:
    """Parse MSH only; raises Hl7Error when there is no usable MSH."""
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error("message does not start with an MSH segment")
    sep = text[3]
    first = _SEGMENT_SPLIT.split(text, 1)[0]
    fields = first.split(sep)
    encoding = fields[1] if len(fields) > 1 else "^~\\&"
    if len(encoding) < 4:
        encoding = (encoding + "^~\\&"[len(encoding):])
    comp = encoding[0]

    def f(n: int) -> str:  # MSH-n (MSH-1 is the separator itself)
        return fields[n - 1] if len(fields) >= n else ""

    return Header(sep, encoding, f(3).split(comp)[0], f(4).split(comp)[0], f(5).split(comp)[0],
                  f(6).split(comp)[0], f(10), "^".join(f(9).split(comp)[:2]), f(12).split(comp)[0])


class _Codec:
    def __init__(self, encoding: str) -> None:
        self.comp, self.rep, self.esc, self.sub = encoding[0], encoding[1], encoding[2], encoding[3]
        self._escapes = {"F": None, "S": self.comp, "T": self.sub, "R": self.rep, "E": self.esc, ".br": "\n"}

    def unescape(self, text: str, field_sep: str) -> str:
        esc = self.esc
        if esc not in text:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch != esc:
                out.append(ch)
                i += 1
                continue
            end = text.find(esc, i + 1)
            if end < 0:
                out.append(text[i:])
                break
            seq = text[i + 1:end]
            if seq == "F":
                out.append(field_sep)
            elif seq in self._escapes:
                out.append(self._escapes[seq] or "")
            elif seq.startswith("X") and len(seq) % 2 == 1:
                try:
                    out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
                except ValueError:
                    pass
            # \H\, \N\ (highlighting) and unknown sequences are dropped.
            i = end + 1
        return "".join(out)


class _Segment:
    __slots__ = ("name", "fields", "codec", "sep")

    def __init__(self, line: str, sep: str, codec: _Codec) -> None:
        self.fields = line.split(sep)
        self.name = self.fields[0]
        self.codec = codec
        self.sep = sep

    def raw(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def reps(self, n: int) -> list[str]:
        raw = self.raw(n)
        return [r for r in raw.split(self.codec.rep)] if raw else []

    def comp(self, n: int, c: int = 1, rep: str | None = None) -> str:
        """Component c (1-based) of field n (first repetition unless ``rep`` is given), unescaped."""
        value = self.raw(n).split(self.codec.rep)[0] if rep is None else rep
        parts = value.split(self.codec.comp)
        return self.codec.unescape(parts[c - 1], self.sep) if c <= len(parts) else ""

    def text(self, n: int) -> str:
        """A whole field as text: repetitions joined by newlines, components kept."""
        return "\n".join(self.codec.unescape(r, self.sep) for r in self.reps(n))


def parse_oru(text: str) -> OruMessage:
    """Parse an ORU^R01; raise Hl7Error (AR) for anything else or a broken structure."""
    header = read_header(text)
    where = f"message {header.control_id or '<no MSH-10>'}"
    if not header.control_id:
        raise Hl7Error("MSH-10 message control id is empty")
    if header.message_type != "ORU^R01":
        raise Hl7Error(f"{where}: unsupported message type {header.message_type or '<empty>'}")
    codec = _Codec(header.encoding)
    sep = header.field_sep
    segments = [_Segment(line, sep, codec) for line in _SEGMENT_SPLIT.split(text) if line.strip()]
    msh = segments[0]
    patient: Hl7Patient | None = None
    order: Hl7Order | None = None  # the open order group; a new PID closes it
    orders: list[Hl7Order] = []
    note_target: list[str] | None = None
    for seg in segments[1:]:
        name = seg.name
        if name == "PID":
            patient = _patient(seg)
            order = None
            note_target = None
        elif name == "ZPC" and patient is not None:
            patient.sms_consent = seg.comp(2).upper() == "Y"
            patient.email_consent = seg.comp(3).upper() == "Y"
            patient.time_zone = seg.comp(4)
        elif name == "OBR":
            if patient is None:
                raise Hl7Error(f"{where}: OBR with no PID segment before it")
            order = _order(seg, patient)
            orders.append(order)
            note_target = order.notes
        elif name == "OBX":
            if order is None:
                raise Hl7Error(f"{where}: OBX before any OBR of its patient group")
            obs = _observation(seg)
            order.observations.append(obs)
            note_target = obs.notes
        elif name == "NTE":
            if note_target is not None:
                note_target.append(seg.text(3))
        # PV1, ORC, SPM, TQ1 and Z-segments carry nothing the events need.
    if patient is None:
        raise Hl7Error(f"{where}: no PID segment")
    if not orders:
        raise Hl7Error(f"{where}: no OBR segment")
    return OruMessage(header.sending_app, header.sending_facility, header.control_id, msh.comp(6),  # MSH-7: MSH-1 is the separator itself
                      header.message_type, header.version, orders)


def _patient(seg: _Segment) -> Hl7Patient:
    identifiers = []
    for rep in seg.reps(3):
        authority = seg.comp(3, 4, rep)
        hd = authority.split(seg.codec.sub)
        identifiers.append(Identifier(seg.comp(3, 1, rep), hd[0], hd[1] if len(hd) > 1 else "",
                                      seg.comp(3, 5, rep)))
    patient = Hl7Patient(identifiers, language=seg.comp(15, 1))
    phone_deleted = email_deleted = False
    for n in (13, 14):
        for rep in seg.reps(n):
            if rep == HL7_DELETE:  # the whole field (or repetition) deleted: its phones and e-mails
                phone_deleted = email_deleted = True
                continue
            use, equipment = seg.comp(n, 2, rep), seg.comp(n, 3, rep)
            if equipment.lower() == "internet" or use == "NET":
                email = seg.comp(n, 4, rep)
                if email == HL7_DELETE:
                    email_deleted = True
                elif email:
                    patient.emails.append(email)
                continue
            number = _xtn_number(seg, n, rep)
            if number == HL7_DELETE:
                phone_deleted = True
            elif number:
                patient.phones.append((number, use, equipment))
    patient.carries_phone = bool(patient.phones) or phone_deleted
    patient.carries_email = bool(patient.emails) or email_deleted
    return patient


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _xtn_number(seg: _Segment, n: int, rep: str) -> str:
    """The phone number of one XTN: XTN-12 (unformatted), else the components (country code
    XTN-5, area XTN-6, local number XTN-7) as ``+<cc><area><local>`` (no ``+`` without a
    country code), else the deprecated XTN-1; an extension (XTN-8) as RFC 3966 ``;ext=``.
    ``HL7_DELETE`` when the number is explicitly deleted, "" when there is none."""
    unformatted, legacy, local = seg.comp(n, 12, rep), seg.comp(n, 1, rep), seg.comp(n, 7, rep)
    number = unformatted if unformatted != HL7_DELETE else ""
    if not number and _digits(local):
        number = _digits(seg.comp(n, 6, rep)) + _digits(local)
        country = _digits(seg.comp(n, 5, rep)).lstrip("0")
        if country:
            number = f"+{country}{number}"
    if not number and legacy != HL7_DELETE:
        number = legacy
    if not number:
        return HL7_DELETE if HL7_DELETE in (unformatted, local, legacy) else ""
    extension = _digits(seg.comp(n, 8, rep))
    if extension and ";ext=" not in number:
        number += f";ext={extension}"
    return number


def _order(seg: _Segment, patient: Hl7Patient) -> Hl7Order:
    return Hl7Order(placer=seg.comp(2), filler=seg.comp(3), code=seg.comp(4, 1), name=seg.comp(4, 2),
                    coding_system=seg.comp(4, 3), observed=seg.comp(7), status_changed=seg.comp(22),
                    status=seg.comp(25), ordering_provider=seg.comp(16, 1) or None, patient=patient)


def _observation(seg: _Segment) -> Hl7Observation:
    value_type = seg.comp(2)
    value_code = value_system = ""
    if value_type == "SN":  # structured numeric: comparator^num1^separator^num2 -> "<5", "1:128"
        value = "".join(seg.codec.unescape(c, seg.sep) for c in seg.raw(5).split(seg.codec.comp))
    elif value_type in ("CWE", "CE", "CNE", "CF"):
        value_code, value_system = seg.comp(5, 1), seg.comp(5, 3)
        value = seg.comp(5, 2) or value_code
    elif value_type == "ED":
        value = "[encapsulated data]"  # documents travel elsewhere; an event carries no blobs
    else:
        value = seg.text(5)
    return Hl7Observation(
        set_id=seg.comp(1), value_type=value_type, code=seg.comp(3, 1), name=seg.comp(3, 2),
        coding_system=seg.comp(3, 3), sub_id=seg.comp(4), value=value, unit=seg.comp(6, 1) or None,
        reference_range=seg.comp(7) or None, flag=seg.comp(8) or None, status=seg.comp(11),
        observed=seg.comp(14), value_code=value_code, value_system=value_system,
    )


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def parse_ts(text: str, default_zone: ZoneInfo | timezone = timezone.utc) -> int | None:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) -> epoch ms; None when empty or invalid."""
    m = _TS.match(text.strip()) if text else None
    if not m:
        return None
    y, mo, d, h, mi, s, frac, off = m.groups()
    zone: ZoneInfo | timezone = default_zone
    try:
        if off:
            hours, minutes = int(off[1:3]), int(off[3:5])
            if minutes > 59:
                return None
            zone = timezone((1 if off[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes))
        value = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0),
                         int((frac or "0").ljust(6, "0")[:6]), tzinfo=zone)
    except ValueError:  # a field out of range, or an offset of 24 hours or more
        return None
    return int(value.timestamp() * 1000)


def build_ack(header: Header | None, code: str, text: str = "", control_id: str = "ACK") -> str:
    """An ACK for ``header`` (or a bare one when the MSH was unreadable). ``text`` must be PHI-free."""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    if header is None:
        header = Header("|", "^~\\&", "", "", "", "", "", "", "2.5.1")
    sep = header.field_sep
    msh = sep.join(["MSH", header.encoding, header.receiving_app, header.receiving_facility, header.sending_app,
                    header.sending_facility, now, "", "ACK^R01^ACK".replace("^", header.encoding[0]),
                    f"{control_id}-{header.control_id}", "P", header.version or "2.5.1"])
    clean = text.replace(sep, " ").replace(header.encoding[0], " ")[:80]
    msa = sep.join(["MSA", code, header.control_id] + ([clean] if clean else []))
    return msh + "\r" + msa + "\r"

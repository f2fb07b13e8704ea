"""ORU^R01 rendering of the data set and an MLLP sender that behaves like a LIS.

A sender keeps its connection open and streams messages, waiting for each ACK;
on a dropped connection or a lost ACK it reconnects and sends the message again
(so duplicates are routine, as in the field). Faults: duplicates, malformed
messages (no MSH, unsupported type, unknown status code), dropped connections.
"""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from devstack.lis_simulator.dataset import SimReport

OBR_STATUS = {"registered": "I", "preliminary": "P", "final": "F", "corrected": "C", "amended": "C",
              "cancelled": "X", "entered-in-error": "X"}
OBX_STATUS = {"preliminary": "P", "final": "F", "corrected": "C", "amended": "C", "cancelled": "X",
              "entered-in-error": "W"}


def ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d%H%M%S+0000")


def escape(text: str) -> str:
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
            .replace("~", "\\R\\").replace("\n", "\\.br\\"))


def render_oru(reports: list[SimReport], control_id: str, sending_app: str = "LIS",
               sending_facility: str = "MAINLAB") -> str:
    """One ORU^R01 for one patient with an OBR group per report."""
    p = reports[0].patient
    telecom = []
    if p.phone:
        telecom.append(f"^PRN^CP^^^^^^^^^{p.phone}")
    if p.email:
        telecom.append(f"^NET^Internet^{p.email}")
    segments = [
        f"MSH|^~\\&|{sending_app}|{sending_facility}|LABCONNECT|DRDANG|{ts(reports[0].updated_ms)}||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        # PID-3 repeats: the SSN first on purpose; the connector must pick by type, not position.
        f"PID|1||999-00-0000^^^SSA^SS~{p.mrn}^^^LAB&1.2.3.4&ISO^MR||{escape(p.family)}^{escape(p.given)}||"
        f"{p.birth_date.replace('-', '')}|U|||||{'~'.join(telecom)}||{p.language}",
        f"ZPC|1|{'Y' if p.sms_consent else 'N'}|{'Y' if p.email_consent else 'N'}|{p.time_zone}",
        "PV1|1|O",
    ]
    for n, r in enumerate(reports, 1):
        segments.append(f"ORC|RE|PL{r.accession}|{r.accession}")
        obr = ["OBR", str(n), f"PL{r.accession}", f"{r.accession}^LAB", f"{r.code}^{escape(r.name)}^LN", "", "",
               ts(r.effective_ms)] + [""] * 8 + [f"{r.provider}^Doe^John"] + [""] * 5 + [ts(r.updated_ms), "", "",
                                                                                         OBR_STATUS[r.status]]
        segments.append("|".join(obr))
        if r.status == "corrected":
            segments.append("NTE|1|L|Corrected report: value re-measured \\T\\ verified")
        for i, res in enumerate(r.results, 1):
            rng = (f"{res.low}-{res.high}" if res.low is not None else f"<{res.high}")
            segments.append(f"OBX|{i}|NM|{res.code}^{escape(res.name)}^LN||{res.value}|{res.unit}|{rng}|"
                            f"{res.flag or ''}|||{OBX_STATUS[res.status]}|||{ts(r.effective_ms)}")
            if res.note:
                segments.append(f"NTE|1|L|{escape(res.note)}")
    return "\r".join(segments) + "\r"


def expected_hl7_event_ids(reports: list[SimReport], source: str = "lis") -> set[str]:
    """The event ids the connector must produce for these report versions sent over HL7."""
    from connectors.source_lis.events import report_event_id, result_event_id

    ids = set()
    for r in reports:
        changed = ts(r.updated_ms)
        ids.add(report_event_id(source, r.accession, r.status, f"{OBR_STATUS[r.status]}@{changed}"))
        for res in r.results:
            ids.add(result_event_id(source, r.accession, res.code, "", f"{OBX_STATUS[res.status]}@{changed}"))
    return ids


@dataclass
class Hl7Faults:
    duplicate_share: float = 0.0  # send the message twice
    drop_share: float = 0.0  # drop the connection after sending, before the ACK; then re-send
    malformed: int = 0  # number of malformed messages mixed in


@dataclass
class Hl7Feed:
    """Messages for a list of report versions (some with two OBR groups)."""

    versions: list[SimReport]
    seed: int = 1
    multi_share: float = 0.1
    faults: Hl7Faults = field(default_factory=Hl7Faults)
    sending_app: str = "LIS"
    sending_facility: str = "MAINLAB"

    def messages(self) -> list[tuple[str, str]]:
        """(control id, message text), malformed ones included (their ids start with BAD)."""
        rng = random.Random(self.seed)
        out: list[tuple[str, str]] = []
        i = 0
        while i < len(self.versions):
            group = [self.versions[i]]
            if rng.random() < self.multi_share and i + 1 < len(self.versions):
                group.append(replace(self.versions[i + 1], patient=group[0].patient))
                i += 1
            i += 1
            control = f"MSG{len(out):09d}"
            out.append((control, render_oru(group, control, self.sending_app, self.sending_facility)))
        kinds = ["garbage", "adt", "bad-status"]
        for n in range(self.faults.malformed):
            kind = kinds[n % len(kinds)]
            control = f"BAD{n:06d}"
            if kind == "garbage":
                text = "this is not HL7\r"
            elif kind == "adt":
                text = f"MSH|^~\\&|LIS|MAINLAB|X|Y|20260101000000||ADT^A01|{control}|P|2.5.1\rPID|1||1^^^LAB^MR\r"
            else:
                text = render_oru([self.versions[0]], control).replace("|||F\r", "|||Q\r", 1)
                text = text.replace(f"|{self.versions[0].accession}^LAB|", f"|BAD{n}^LAB|")
                parts = text.split("\r")
                parts = [("|".join(s.split("|")[:25] + ["Q"]) if s.startswith("OBR") else s) for s in parts]
                text = "\r".join(parts)
            out.insert(rng.randrange(len(out) + 1), (control, text))
        return out


class MllpSender:
    """Sends messages over one kept-open connection, waiting for each ACK; re-sends after a drop."""

    def __init__(self, host: str, port: int, *, encoding: str = "utf-8", timeout_s: float = 30.0,
                 faults: Hl7Faults | None = None, seed: int = 1) -> None:
        self.host, self.port, self.encoding, self.timeout_s = host, port, encoding, timeout_s
        self.faults = faults or Hl7Faults()
        self.rng = random.Random(seed)
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.acks: dict[str, str] = {}  # control id -> last MSA-1
        self.sent = 0

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self.buffer = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, control_id: str, text: str) -> str:
        data = b"\x0b" + text.encode(self.encoding) + b"\x1c\x0d"
        for _attempt in range(10):
            sock = self._connect()
            try:
                sock.sendall(data)
                self.sent += 1
                if self.rng.random() < self.faults.drop_share:
                    self.close()  # the "lost ACK": the LIS gives up on this connection and re-sends
                    continue
                if self.rng.random() < self.faults.duplicate_share:
                    sock.sendall(data)
                    self.sent += 1
                    self._read_ack()
                code = self._read_ack()
                self.acks[control_id] = code
                return code
            except OSError:
                self.close()
        raise ConnectionError(f"no ACK for {control_id}")

    def _read_ack(self) -> str:
        assert self.sock is not None
        while b"\x1c\x0d" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the ACK")
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(b"\x1c\x0d", 1)
        text = frame.lstrip(b"\x0b").decode(self.encoding, "replace")
        msa = next((s for s in text.split("\r") if s.startswith("MSA")), "MSA|??")
        return msa.split("|")[1]


def send_all(host: str, port: int, messages: list[tuple[str, str]], *, senders: int = 1,
             faults: Hl7Faults | None = None, encoding: str = "utf-8") -> dict[str, str]:
    """Send ``messages`` over ``senders`` concurrent connections; returns control id -> ACK code."""
    results: dict[str, str] = {}
    lock = threading.Lock()

    def run(index: int) -> None:
        sender = MllpSender(host, port, faults=faults, seed=index, encoding=encoding)
        try:
            for control, text in messages[index::senders]:
                code = sender.send(control, text)
                with lock:
                    results[control] = code
        finally:
            sender.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results

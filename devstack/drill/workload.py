"""The simulated lab day the drill runs: what the LIS releases when, and what it must lead to.

Two data sets from the LIS simulator: one served over FHIR, one sent as ORU^R01 over MLLP
(its accessions and patients relabelled so the two never share a bill key or a contact).
Every version gets a release time within the drill, in the order the LIS would publish it
(preliminary, final, correction), and some final reports are cancelled later. Poison:
FHIR reports the connector must dead-letter and malformed HL7 messages.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from devstack.lis_simulator.dataset import SimPatient, SimReport, generate, latest
from devstack.lis_simulator.fhir_server import FhirSimulator
from devstack.lis_simulator.hl7_sender import OBX_STATUS, Hl7Faults, Hl7Feed, MllpSender, render_oru, ts

FHIR_SOURCE, HL7_SOURCE = "lis", "lis-hl7"
FINAL_LIKE = ("final", "amended", "corrected", "appended")


@dataclass(frozen=True)
class Hl7Message:
    release_ms: int
    control_id: str
    text: str
    poison: bool


@dataclass
class LabDay:
    fhir: list[SimReport]  # every version, updated_ms = its release time
    hl7: list[SimReport]
    hl7_messages: list[Hl7Message]
    fhir_poison: list[tuple[str, int, str]]  # (report id, release ms, kind)
    start_ms: int
    end_ms: int

    def latest_reports(self) -> dict[tuple[str, str], SimReport]:
        """(source system, accession) -> the version the LIS holds at the end."""
        out = {(FHIR_SOURCE, r.accession): r for r in latest(self.fhir).values()}
        out.update({(HL7_SOURCE, r.accession): r for r in latest(self.hl7).values()})
        return out

    def poison_markers(self) -> list[str]:
        """A string each poison message's dead letter carries (accession or MSH-10)."""
        return [f"BAD{rid}" for rid, _, _ in self.fhir_poison] + [m.control_id for m in self.hl7_messages if m.poison]

    def patients(self) -> list[SimPatient]:
        return list({r.patient.id: r.patient for r in self.fhir + self.hl7}.values())

    def result_ids(self) -> tuple[set[str], set[str]]:
        """(required, allowed) LabResult event ids: every result of the version each FHIR report
        ends in plus every HL7 version sent (each is delivered until acknowledged); allowed adds
        the FHIR versions a poll may or may not have seen before they were superseded."""
        from connectors.source_lis.events import result_event_id

        def fhir_ids(versions: list[SimReport]) -> set[str]:
            return {result_event_id(FHIR_SOURCE, r.accession, res.code, f"{r.id}-{i}", str(r.version))
                    for r in versions for i, res in enumerate(r.results)}

        hl7 = {result_event_id(HL7_SOURCE, r.accession, res.code, "", f"{OBX_STATUS[res.status]}@{ts(r.updated_ms)}")
               for r in self.hl7 for res in r.results}  # as expected_hl7_event_ids, results only
        required = fhir_ids(list(latest(self.fhir).values())) | hl7
        return required, fhir_ids(self.fhir) | hl7


def _retime(versions: list[SimReport], start_ms: int, span_ms: int) -> list[SimReport]:
    """Squeeze the data set's hours into the drill's release span, keeping the order."""
    first, last = versions[0].updated_ms, versions[-1].updated_ms
    scale = span_ms / max(last - first, 1)
    return [replace(v, updated_ms=start_ms + int((v.updated_ms - first) * scale),
                    effective_ms=start_ms + int((v.updated_ms - first) * scale) - 3_600_000) for v in versions]


def _cancel_some(versions: list[SimReport], every: int, delay_ms: int, end_ms: int) -> list[SimReport]:
    """A later cancellation of every n-th report whose life ends in a final, uncorrected version."""
    finals = [v for v in latest(versions).values() if v.status == "final"]
    cancellations = [replace(v, status="cancelled", version=v.version + 1, results=(),
                             updated_ms=min(v.updated_ms + delay_ms, end_ms)) for v in finals[::every]]
    return sorted(versions + cancellations, key=lambda r: (r.updated_ms, r.id))


def _relabel(versions: list[SimReport], prefix: str) -> list[SimReport]:
    """A data set of its own: accessions, report ids and patients that the other one never has."""
    patients: dict[str, SimPatient] = {}

    def patient(p: SimPatient) -> SimPatient:
        if p.id not in patients:
            # Addresses too: the generator's e-mails are patient<n>@..., the same in every data set.
            patients[p.id] = replace(p, id=f"{prefix.lower()}{p.id}", mrn=f"{prefix}{p.mrn}",
                                     phone=p.phone and p.phone.replace("+1555", "+1556", 1),
                                     email=p.email and f"{prefix.lower()}.{p.email}")
        return patients[p.id]

    return [replace(v, id=f"{prefix.lower()}{v.id}", accession=f"{prefix}{v.accession}", patient=patient(v.patient))
            for v in versions]


def plan_day(*, seed: int, fhir_reports: int, hl7_reports: int, start_ms: int, span_ms: int,
             poison: int = 3) -> LabDay:
    end_ms = start_ms + span_ms
    # Releases fill the first 85 %: corrections and cancellations still come after their finals.
    release_span = int(span_ms * 0.85)
    fhir = _retime(generate(seed=seed, reports=fhir_reports, critical_share=0.03), start_ms, release_span)
    fhir = _cancel_some(fhir, 25, span_ms // 10, end_ms)
    hl7 = _retime(_relabel(generate(seed=seed + 1, reports=hl7_reports, critical_share=0.03), "H"),
                  start_ms, release_span)
    hl7 = _cancel_some(hl7, 25, span_ms // 10, end_ms)
    messages = [Hl7Message(v.updated_ms, f"MSG{n:09d}", render_oru([v], f"MSG{n:09d}"), False)
                for n, v in enumerate(hl7)]
    rng = random.Random(seed)
    bad = [(c, t) for c, t in Hl7Feed(hl7[:1], faults=Hl7Faults(malformed=poison)).messages() if c.startswith("BAD")]
    for control, text in bad:
        if text.startswith("this is not HL7"):
            text = f"this is not HL7 {control}\r"  # each garbage frame recognisable in the dead-letter queue
        messages.append(Hl7Message(start_ms + rng.randrange(release_span), control, text, True))
    messages.sort(key=lambda m: m.release_ms)
    fhir_poison = [(f"poison-{n}", start_ms + rng.randrange(release_span), ("unknown-status", "no-patient-id")[n % 2])
                   for n in range(poison)]
    return LabDay(fhir, hl7, messages, fhir_poison, start_ms, end_ms)


@dataclass
class LisFeeds:
    """Releases the day in real time: FHIR versions into the simulator, HL7 messages over MLLP.

    The MLLP sender behaves like a LIS: it re-sends a message until it is acknowledged
    (``AA``; ``AE`` for a good message means its batch was aborted, so it goes again),
    reconnecting while the connector is down. Poison messages are sent until answered at all."""

    day: LabDay
    fhir: FhirSimulator
    mllp_port: int
    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    acks: dict[str, int] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._feed_fhir, self._feed_hl7):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self.threads.append(thread)

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _wait_until(self, ms: int) -> bool:
        while not self.stop_event.is_set():
            delay = (ms - self.now_ms()) / 1000
            if delay <= 0:
                return True
            self.stop_event.wait(min(delay, 0.5))
        return False

    def _feed_fhir(self) -> None:
        events: list[tuple[int, int, object]] = [(v.updated_ms, 0, v) for v in self.day.fhir]
        events += [(ms, 1, (rid, kind)) for rid, ms, kind in self.day.fhir_poison]
        for ms, kind, item in sorted(events, key=lambda e: (e[0], e[1])):
            if not self._wait_until(ms):
                return
            if kind == 0:
                assert isinstance(item, SimReport)
                self.fhir.publish(item)
            else:
                rid, poison_kind = item  # type: ignore[misc]
                self.fhir.publish_malformed(rid, ms, poison_kind)

    def _feed_hl7(self) -> None:
        sender = MllpSender("127.0.0.1", self.mllp_port, timeout_s=15)
        try:
            for message in self.day.hl7_messages:
                if not self._wait_until(message.release_ms):
                    return
                self._deliver(sender, message)
        finally:
            sender.close()

    def _deliver(self, sender: MllpSender, message: Hl7Message) -> None:
        while not self.stop_event.is_set():
            try:
                code = sender.send(message.control_id, message.text)
            except (ConnectionError, OSError):
                code = ""  # the listener is down (killed): reconnect and send again
            if code:
                self.acks[code] = self.acks.get(code, 0) + 1
            if code == "AA" or (message.poison and code in ("AR", "AE")):
                return
            self.stop_event.wait(0.5)
        self.errors.append(f"HL7 {message.control_id} never acknowledged")

"""A FHIR R4 server subset: DiagnosticReport search with _lastUpdated/_count/_include/_sort.

Resources are rendered to JSON once per version and pages are byte-joins of those,
so the server keeps up with a benchmark. The next link is an opaque token over a
snapshot of the matching ids (as real servers do). Fault switches: 500s, slow
pages, dropped connections, expired paging cursors, truncated JSON, malformed
resources and late-committed updates (new version with an older lastUpdated).
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from devstack.lis_simulator.dataset import SimPatient, SimReport
from devstack.quiet_http import QuietThreadingHTTPServer

LOINC = "http://loinc.org"
EXT = "https://drdangslab.com/fhir/StructureDefinition/"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> int:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def patient_json(p: SimPatient) -> dict[str, Any]:
    telecom = []
    if p.phone:
        telecom.append({"system": "phone", "value": p.phone, "use": "mobile"})
    if p.email:
        telecom.append({"system": "email", "value": p.email})
    return {
        "resourceType": "Patient", "id": p.id, "meta": {"versionId": "1", "lastUpdated": iso(p.updated_ms)},
        "identifier": [
            {"type": {"coding": [{"code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-00-0000"},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": "urn:oid:1.2.3.4.lab", "value": p.mrn},
        ],
        "name": [{"family": p.family, "given": [p.given]}], "birthDate": p.birth_date, "telecom": telecom,
        "communication": [{"language": {"coding": [{"code": p.language}]}, "preferred": True}],
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/tz-code", "valueCode": p.time_zone},
            {"url": EXT + "sms-consent", "valueBoolean": p.sms_consent},
            {"url": EXT + "email-consent", "valueBoolean": p.email_consent},
        ],
    }


def observation_json(report: SimReport, index: int) -> dict[str, Any]:
    r = report.results[index]
    rng: dict[str, Any] = {}
    if r.low is not None:
        rng["low"] = {"value": r.low, "unit": r.unit}
    if r.high is not None:
        rng["high"] = {"value": r.high, "unit": r.unit}
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"{report.id}-{index}",
        "meta": {"versionId": str(report.version), "lastUpdated": iso(report.updated_ms)},
        "status": r.status, "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": r.code, "display": r.name}], "text": r.name},
        "subject": {"reference": f"Patient/{report.patient.id}"},
        "effectiveDateTime": iso(report.effective_ms),
        "valueQuantity": {"value": float(r.value), "unit": r.unit, "system": "http://unitsofmeasure.org",
                          "code": r.unit},
        "referenceRange": [rng],
    }
    if r.flag:
        obs["interpretation"] = [{"coding": [{"code": r.flag}]}]
    if r.note:
        obs["note"] = [{"text": r.note}]
    return obs


def report_json(report: SimReport) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport", "id": report.id,
        "meta": {"versionId": str(report.version), "lastUpdated": iso(report.updated_ms)},
        "extension": [{"url": EXT + "ordering-provider", "valueIdentifier": {"value": report.provider}}],
        "identifier": [{"type": {"coding": [{"code": "FILL"}]}, "value": report.accession}],
        "status": report.status,
        "code": {"coding": [{"system": LOINC, "code": report.code, "display": report.name}], "text": report.name},
        "subject": {"reference": f"Patient/{report.patient.id}"},
        "effectiveDateTime": iso(report.effective_ms),
        "result": [{"reference": f"Observation/{report.id}-{i}"} for i in range(len(report.results))],
    }


def _entry(base: str, resource: dict[str, Any], mode: str) -> bytes:
    return json.dumps({"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                       "search": {"mode": mode}}, separators=(",", ":")).encode()


@dataclass
class FhirFaults:
    """Switches a test or the CLI flips; counters are consumed as requests arrive."""

    fail_next: int = 0  # answer 500 to the next N requests
    throttle_next: int = 0  # answer 429 with Retry-After
    drop_next: int = 0  # close the connection without an answer
    truncate_next: int = 0  # send a page cut in the middle of its JSON
    expire_cursors: bool = False  # 410 for every next link (a server that forgot its paging state)
    page_delay_s: float = 0.0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str) -> bool:
        with self.lock:
            value = getattr(self, name)
            if value > 0:
                setattr(self, name, value - 1)
                return True
            return False


class FhirSimulator:
    """Holds the visible report versions and serves them; ``base_url`` once started."""

    def __init__(self, *, max_count: int = 10_000, token: str | None = None, basic: tuple[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.max_count = max_count
        self.token = token
        self.basic = basic
        self.host = host
        self.faults = FhirFaults()
        self.current: dict[str, SimReport] = {}
        self.history: list[SimReport] = []  # every version ever published
        self._raw: dict[str, tuple[int, bytes]] = {}  # malformed reports: id -> (lastUpdated, entries)
        self._keys: list[tuple[int, str]] = []
        self._dirty = False
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, int], bytes] = {}
        self._pages: dict[str, list[str]] = {}
        self._searched_at: dict[str, int] = {}
        self._server: QuietThreadingHTTPServer | None = None
        self.base_url = ""

    # -- data ------------------------------------------------------------------------------------------
    def publish(self, versions: list[SimReport] | SimReport) -> None:
        items = [versions] if isinstance(versions, SimReport) else versions
        with self._lock:
            for version in items:
                self.current[version.id] = version
                self.history.append(version)
            self._dirty = True

    def late_update(self, report_id: str, lag_ms: int, status: str = "amended") -> SimReport:
        """A new version committed late: its lastUpdated is ``lag_ms`` before the newest visible one."""
        with self._lock:
            newest = max(v.updated_ms for v in self.current.values())
            old = self.current[report_id]
            results = tuple(replace(r, status="amended") for r in old.results) if old.results else ()
            version = replace(old, version=old.version + 1, status=status, updated_ms=newest - lag_ms,
                              results=results)
            self.publish(version)
            return version

    def publish_malformed(self, report_id: str, updated_ms: int, kind: str = "unknown-status") -> None:
        """A report the connector must dead-letter: ``unknown-status`` or ``no-patient-id``."""
        with self._lock:
            sample = next(iter(self.current.values()))
            report = replace(sample, id=report_id, accession=f"BAD{report_id}", updated_ms=updated_ms, results=())
            dr = report_json(report)
            entries = []
            if kind == "unknown-status":
                dr["status"] = "bogus"
                entries.append(_entry(self.base_url, patient_json(report.patient), "include"))
            else:
                dr["subject"] = {"reference": "Patient/nobody"}
            self._raw[report_id] = (updated_ms, b",".join([_entry(self.base_url, dr, "match")] + entries))
            self.current.pop(report_id, None)
            self._dirty = True

    def expected_event_ids(self, source: str = "lis", history: bool = False) -> set[str]:
        """The event ids (LabResult + LabReport) the connector must produce for the current
        version of every report, or with ``history`` for every version ever published (what a
        poller that saw each version produces); use it in end-to-end tests."""
        from connectors.source_lis.events import report_event_id, result_event_id

        ids = set()
        with self._lock:
            for r in (self.history if history else self.current.values()):
                ids.add(report_event_id(source, r.accession, r.status, str(r.version)))
                for i, res in enumerate(r.results):
                    ids.add(result_event_id(source, r.accession, res.code, f"{r.id}-{i}", str(r.version)))
        return ids

    def prerender(self) -> None:
        """Render every current resource now, so serving pages is only byte joins (benchmarks)."""
        ids = [k for _, k in self._sorted_keys()]
        for start in range(0, len(ids), 1000):
            self.render_page(ids, "warm", start, 1000)

    def result_count(self) -> int:
        with self._lock:
            return sum(len(r.results) for r in self.current.values())

    # -- search ----------------------------------------------------------------------------------------
    def _sorted_keys(self) -> list[tuple[int, str]]:
        with self._lock:
            if self._dirty:
                self._keys = sorted([(v.updated_ms, k) for k, v in self.current.items()]
                                    + [(ms, k) for k, (ms, _) in self._raw.items()])
                self._dirty = False
            return self._keys

    def search(self, params: list[tuple[str, str]]) -> tuple[list[str], int]:
        lower, upper, lower_incl, upper_incl = None, None, True, False
        count = 100
        for name, value in params:
            if name == "_lastUpdated":
                prefix, instant = value[:2], value[2:]
                if prefix in ("ge", "gt"):
                    lower, lower_incl = parse_iso(instant), prefix == "ge"
                elif prefix in ("lt", "le"):
                    upper, upper_incl = parse_iso(instant), prefix == "le"
                else:
                    lower, lower_incl = parse_iso(value), True
            elif name == "_count":
                count = min(int(value), self.max_count)
        keys = self._sorted_keys()
        lo = 0 if lower is None else (bisect.bisect_left(keys, (lower, "")) if lower_incl
                                      else bisect.bisect_left(keys, (lower + 1, "")))
        hi = len(keys) if upper is None else (bisect.bisect_left(keys, (upper + 1, "")) if upper_incl
                                              else bisect.bisect_left(keys, (upper, "")))
        return [k for _, k in keys[lo:hi]], count

    def clock_ms(self) -> int:
        """The simulated LIS's clock: the newest lastUpdated it has published."""
        keys = self._sorted_keys()
        return keys[-1][0] if keys else 0

    def render_page(self, ids: list[str], token: str, start: int, count: int) -> bytes:
        page_ids = ids[start:start + count]
        parts: list[bytes] = []
        patients: set[str] = set()
        with self._lock:
            for rid in page_ids:
                raw = self._raw.get(rid)
                if raw is not None:
                    parts.append(raw[1])
                    continue
                report = self.current.get(rid)
                if report is None:
                    continue
                key = (rid, report.version)
                cached = self._cache.get(key)
                if cached is None:
                    cached = b",".join([_entry(self.base_url, report_json(report), "match")] + [
                        _entry(self.base_url, observation_json(report, i), "include")
                        for i in range(len(report.results))])
                    self._cache[key] = cached
                parts.append(cached)
                if report.patient.id not in patients:
                    patients.add(report.patient.id)
                    pkey = ("Patient/" + report.patient.id, 1)
                    pcached = self._cache.get(pkey)
                    if pcached is None:
                        pcached = self._cache[pkey] = _entry(self.base_url, patient_json(report.patient), "include")
                    parts.append(pcached)
        links = [{"relation": "self", "url": f"{self.base_url}/DiagnosticReport?_page={token}&_offset={start}"}]
        if start + count < len(ids):
            links.append({"relation": "next",
                          "url": f"{self.base_url}/DiagnosticReport?_page={token}&_offset={start + count}"
                                 f"&_count={count}"})
        bundle_head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(ids),
                                       "link": links}
        searched_at = self._searched_at.get(token)
        if searched_at is not None:  # as a server does: when the search was made
            bundle_head["meta"] = {"lastUpdated": iso(searched_at)}
        head = json.dumps(bundle_head, separators=(",", ":")).encode()
        return head[:-1] + b',"entry":[' + b",".join(parts) + b"]}"

    # -- HTTP ------------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the data is PHI-like
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                sim.faults.requests += 1
                if not sim._authorised(self.headers.get("Authorization")):
                    return self._send(401, b'{"resourceType":"OperationOutcome"}')
                if sim.faults.take("drop_next"):
                    self.close_connection = True
                    self.connection.close()
                    return None
                if sim.faults.take("fail_next"):
                    return self._send(500, b'{"resourceType":"OperationOutcome"}')
                if sim.faults.take("throttle_next"):
                    return self._send(429, b'{"resourceType":"OperationOutcome"}', {"Retry-After": "0"})
                url = urlsplit(self.path)
                if not url.path.endswith("/DiagnosticReport"):
                    return self._send(404, b'{"resourceType":"OperationOutcome"}')
                params = parse_qsl(url.query)
                query = dict(params)
                if "_page" in query:
                    ids = sim._pages.get(query["_page"])
                    if ids is None or sim.faults.expire_cursors:
                        return self._send(410, b'{"resourceType":"OperationOutcome"}')
                    token, start, count = query["_page"], int(query.get("_offset", 0)), int(query.get("_count", 100))
                else:
                    ids, count = sim.search(params)
                    token, start = uuid.uuid4().hex, 0
                    sim._pages[token] = ids
                    sim._searched_at[token] = sim.clock_ms()
                body = sim.render_page(ids, token, start, count)
                if sim.faults.page_delay_s:
                    time.sleep(sim.faults.page_delay_s)
                if sim.faults.take("truncate_next"):
                    body = body[: len(body) // 2]
                return self._send(200, body)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self._server = QuietThreadingHTTPServer((self.host, port), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{self.host}:{self._server.server_address[1]}/fhir"
        threading.Thread(target=self._server.serve_forever, name="fhir-simulator", daemon=True).start()
        return self.base_url

    def _authorised(self, header: str | None) -> bool:
        if self.token is not None:
            return header == f"Bearer {self.token}"
        if self.basic is not None:
            expected = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            return header == f"Basic {expected}"
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

"""The PHI canary: the whole pipeline runs with patients whose names, phones, e-mails and
result values are unique marker strings, errors are driven into every path, and everything
an operator can see is scanned for the markers. Any marker found fails the test.

Error paths: the LIS answering 500 (source retries), a malformed FHIR report (source
dead-letters it), a record no sink can decode carrying the markers (billing, notify and
warehouse dead-letter it), a provider answering 400 for one patient's phone and 503 for a
while (notify's permanent failure and retries), S3 unreachable for a second warehouse (storage
retries), and a bad configuration whose values are markers (exit 2).

Surfaces scanned: every process's output (JSON logs, stderr), each process's HTTP GET /,
/health, /ready, /connectors, /connectors/<name>/status and /metrics, every record of the
status topic, every dead letter's headers, and the output of `labconnect status`,
`labconnect status --json`, `labconnect dlq show`, `labconnect notify report --json` and
`labconnect offsets get source-lis --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from devstack.lis_simulator import SimReport, generate
from devstack.ports import free_port
from devstack.providers import ProviderServer, start_providers
from tests.integration.conftest import RuntimeEnv
from tests.integration.security.conftest import Pipeline, query
from tests.support.kafka_helpers import ROOT, consume_all, produce, wait_for

PATIENTS = 3


@pytest.fixture
def providers() -> Iterator[ProviderServer]:
    server = start_providers()
    yield server
    server.stop()


class Markers:
    """Unique strings no log line, metric or header could contain by chance."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        digits = str(int(tag, 16)).zfill(10)[:9]
        self.family = [f"Canaryfam{tag}{i}" for i in range(PATIENTS)]
        self.given = [f"Canarygiv{tag}{i}" for i in range(PATIENTS)]
        self.phone = [f"+1555{digits[:6]}{i}" for i in range(PATIENTS)]
        self.email = [f"canary.{tag}.{i}@example.org" for i in range(PATIENTS)]
        self.value = f"4.{digits}"  # every result's value: 4.<9 digits>
        self.note = f"Canarynote{tag}"

    def all(self) -> list[str]:
        """What to search for (phones also without their +, e-mails by their local part)."""
        return [*self.family, *self.given, *self.phone, *(p[1:] for p in self.phone),
                *(e.split("@")[0] for e in self.email), self.value[2:], self.note]

    def dress(self, versions: list[SimReport]) -> list[SimReport]:
        """The generated reports with the markers as the patients' identity and every result value."""
        people: dict[str, Any] = {}
        for version in versions:
            if version.patient.id not in people:
                i = len(people) % PATIENTS
                people[version.patient.id] = replace(
                    version.patient, family=self.family[i], given=self.given[i], phone=self.phone[i],
                    email=self.email[i], sms_consent=True, email_consent=True)
        return [replace(v, patient=people[v.patient.id],
                        results=tuple(replace(r, value=self.value, note=self.note) for r in v.results))
                for v in versions]


def _http_surfaces(port: int, connector: str) -> dict[str, str]:
    out = {}
    for path in ("/", "/health", "/ready", "/connectors", f"/connectors/{connector}/status", "/metrics"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                out[path] = response.read().decode()
        except urllib.error.HTTPError as error:  # 503 / 500 bodies are surfaces too
            out[path] = error.read().decode()
    return out


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_no_patient_marker_reaches_anything_an_operator_sees(
        providers: ProviderServer, pipeline: Pipeline, runtime: RuntimeEnv) -> None:
    # `providers` first: torn down last, after the connector processes holding connections to it.
    markers = Markers()
    versions = markers.dress(generate(seed=15, reports=6, patients=PATIENTS, preliminary_share=0,
                                      correction_share=0, cancel_share=0))
    pipeline.lis.publish(versions)
    pipeline.lis.publish_malformed("bad-1", versions[-1].updated_ms + 1)  # dead-lettered by source-lis
    with pipeline.lis.faults.lock:
        pipeline.lis.faults.fail_next = 4  # the LIS answers 500 at first: retries, in status and logs
    providers.faults([{"channel": "sms", "to": markers.phone[1], "status": 400},
                      {"channel": "any", "status": 503, "count": 3}])
    ports = {name: free_port() for name in ("source-lis", "sink-billing", "sink-notify", "sink-warehouse",
                                            "warehouse-s3-down")}
    notify_env = {"NOTIFY_SMS_PROVIDER": "twilio", "TWILIO_BASE_URL": providers.url, "TWILIO_ACCOUNT_SID": "ACtest",
                  "TWILIO_AUTH_TOKEN": "test-token", "TWILIO_FROM": "+15550000000",
                  "NOTIFY_EMAIL_PROVIDER": "sendgrid", "SENDGRID_BASE_URL": providers.url,
                  "SENDGRID_API_KEY": "SG.test", "SENDGRID_FROM": "lab@example.org", "NOTIFY_OUTBOX_PATH": "",
                  "NOTIFY_DISPATCH_INTERVAL_MS": 100, "NOTIFY_SMS_MAX_PER_DAY": 100, "NOTIFY_SMS_MAX_PER_WEEK": 100}
    for connector in ("source-lis", "sink-billing", "sink-warehouse"):
        pipeline.start(connector, STATUS_PORT=ports[connector])
    notify_overrides = {k: v for k, v in notify_env.items() if k != "NOTIFY_OUTBOX_PATH"}
    runtime.start_real("sink-notify", "sink-notify", **{
        k: v for k, v in pipeline.env("sink-notify", STATUS_PORT=ports["sink-notify"], **notify_overrides).items()
        if k != "NOTIFY_OUTBOX_PATH"})
    s3_down = {**pipeline.env("sink-warehouse"), "CONNECTOR_NAME": f"warehouse-s3-down-{uuid.uuid4().hex[:6]}",
               "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "S3_MAX_ATTEMPTS": 1,
               "S3_CONNECT_TIMEOUT_MS": 300, "STATUS_PORT": ports["warehouse-s3-down"]}
    pipeline.names["warehouse-s3-down"] = str(s3_down["CONNECTOR_NAME"])
    runtime.start_real("sink-warehouse", "warehouse-s3-down", **s3_down)
    garbage = json.dumps({"name": markers.family[0], "phone": markers.phone[0], "value": markers.value}).encode()
    produce(runtime.bootstrap, pipeline.reports, [("pat-0", garbage)])
    produce(runtime.bootstrap, pipeline.results, [("pat-0", garbage)])
    bad_config = subprocess.run(
        [sys.executable, "-m", "common", "run", "sink-warehouse"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), "WAREHOUSE_TIMEZONE": markers.family[2],
                         "S3_PART_SIZE_BYTES": markers.phone[2], "FLUSH_MAX_RECORDS": markers.value,
                         "TOPICS": markers.email[2]})
    assert bad_config.returncode == 2 and "WAREHOUSE_TIMEZONE" in bad_config.stderr

    results = sum(len(v.results) for v in versions)
    wait_for(lambda: len(consume_all(runtime.bootstrap, runtime.dlq, timeout=2)) >= 4, 120,
             "dead letters from source-lis, billing, notify and the warehouse")
    wait_for(lambda: query(pipeline.ledger_url, "SELECT count(*) FROM notify_events")[:1] == [(len(versions),)],
             120, "a notify decision per report")
    wait_for(lambda: any(m["to"] == markers.phone[0] for m in providers.messages("sms")), 120,
             "a message sent after the provider's 503s")
    wait_for(lambda: query(pipeline.ledger_url, "SELECT count(*) FROM notify_messages WHERE state = 'failed'")[:1]
             == [(1,)], 120, "the message the provider refused with 400")
    statuses = [json.loads(m.value()) for m in consume_all(runtime.bootstrap, runtime.status)]
    wait_for(lambda: any("retrying" in (t.get("trace") or "") for s in
                         [json.loads(m.value()) for m in consume_all(runtime.bootstrap, runtime.status)]
                         for t in s["tasks"] if s["name"] == pipeline.names["warehouse-s3-down"]), 120,
             "the unreachable S3 in the status")
    assert any("500" in (t.get("trace") or "") for s in statuses for t in s["tasks"]
               if s["name"] == pipeline.names["source-lis"]), "the LIS 500s were retried and shown"

    surfaces: dict[str, str] = {"bad configuration (stderr)": bad_config.stdout + bad_config.stderr}
    for name, port in ports.items():
        for path, body in _http_surfaces(port, pipeline.names[name]).items():
            surfaces[f"{name} GET {path}"] = body
    statuses = [json.loads(m.value()) for m in consume_all(runtime.bootstrap, runtime.status)]
    surfaces["status topic"] = json.dumps(statuses)
    dead_letters = consume_all(runtime.bootstrap, runtime.dlq)
    assert {dict(m.headers())["__connect.errors.connector.name"].decode() for m in dead_letters} >= {
        pipeline.names[c] for c in ("source-lis", "sink-billing", "sink-notify", "sink-warehouse")}
    # The markers did flow: the dead letters keep the original records (PHI stays in the data).
    assert any(markers.family[0].encode() in (m.value() or b"") for m in dead_letters)
    surfaces["dead-letter headers"] = "\n".join(f"{k}={v.decode(errors='replace')}"
                                                for m in dead_letters for k, v in m.headers())
    tool_env = {"KAFKA_BOOTSTRAP_SERVERS": runtime.bootstrap}
    surfaces["labconnect status"] = _cli(["status", "--topic", runtime.status], tool_env)
    surfaces["labconnect status --json"] = _cli(["status", "--json", "--topic", runtime.status], tool_env)
    surfaces["labconnect dlq show"] = _cli(["dlq", "show", "--topic", runtime.dlq], tool_env)
    surfaces["labconnect notify report"] = _cli(["notify", "report", "--since", "3650d", "--json",
                                                 "--database", pipeline.ledger_url], tool_env)
    surfaces["labconnect offsets get source-lis"] = _cli(
        ["offsets", "get", "source-lis", "--json"], {k: str(v) for k, v in runtime.env(**pipeline.env("source-lis")).items()})
    for process in runtime.processes:
        assert process.poll() is None, "every connector kept running through the errors"
    for log_name in ("source-lis", "sink-billing", "sink-notify", "sink-warehouse", "warehouse-s3-down"):
        surfaces[f"{log_name} log"] = runtime.log(log_name)

    assert all(surfaces.values()), [name for name, text in surfaces.items() if not text]
    assert markers.phone[1] not in json.dumps(providers.messages("sms")), "the 400 was not a send"
    leaks = [(surface, marker) for surface, text in surfaces.items() for marker in markers.all()
             if marker.lower() in text.lower()]
    assert leaks == []
    assert len(surfaces) >= 30 and results > 0

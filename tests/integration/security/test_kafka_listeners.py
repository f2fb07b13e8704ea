"""Every connector and operator tool through the broker's SASL_SSL (SCRAM-SHA-512) listener
alone, and through its mutual-TLS listener alone, by configuration only: source-lis polling
a FHIR LIS, the three sinks, their status and dead-letter producers, `labconnect status` and
`labconnect dlq`, `labconnect offsets`, the schema registry client over HTTPS with basic auth, PostgreSQL over TLS
(sslmode=verify-full) for billing and the notify ledger, S3 objects encrypted with SSE-KMS.
Refused credentials and certificates end a process with exit 2 naming the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from devstack.kafka import SecureListeners, client_environment
from devstack.schema_registry import SchemaRegistry
from devstack.tls import CertificateAuthority
from tests.integration.conftest import RuntimeEnv
from tests.integration.security.conftest import LISTENERS, Pipeline, listener_env, query
from tests.support.kafka_helpers import ROOT, consume_all, produce, wait_for

KMS_KEY_ID = "arn:aws:kms:us-east-1:123456789012:key/0c4f6d2e-labconnect-test"


def labconnect(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The operator CLI as a process, configured by ``env`` alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SCHEMA_REGISTRY_"))}
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**clean, "PYTHONPATH": str(ROOT), **env})


def _warehouse_objects(s3_client: Any, bucket: str) -> list[str]:
    response = s3_client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in response.get("Contents", []))


def _warehouse_rows(s3_client: Any, bucket: str, tmp: Path) -> int:
    rows = 0
    for key in _warehouse_objects(s3_client, bucket):
        if key.endswith(".parquet"):
            target = tmp / key.replace("/", "_")
            s3_client.download_file(bucket, key, str(target))
            rows += pq.read_metadata(target).num_rows
    return rows


@pytest.mark.parametrize("listener", LISTENERS)
def test_the_pipeline_and_the_operator_tools_work_through_the_secure_listener_alone(
        listener: str, kafka_secure: SecureListeners, pipeline: Pipeline, runtime: RuntimeEnv,
        schema_registry: tuple[SchemaRegistry, dict[str, str]], s3_client: Any) -> None:
    registry, registry_env = schema_registry
    secure = {**listener_env(kafka_secure, listener), **registry_env}
    versions = pipeline.publish(reports=6)
    results = sum(len(v.results) for v in versions)
    for connector in ("source-lis", "sink-billing", "sink-notify"):
        pipeline.start(connector, **secure)
    pipeline.start("sink-warehouse", **secure, S3_SSE="aws:kms", S3_SSE_KMS_KEY_ID=KMS_KEY_ID)
    # A record no sink can decode: both report sinks dead-letter it through their DLQ producers.
    produce(runtime.bootstrap, pipeline.reports, [("pat-x", b"not an Avro record")])

    wait_for(lambda: _warehouse_rows(s3_client, pipeline.bucket, runtime.tmp) >= results, 120,
             "every result in the warehouse", interval=1)
    wait_for(lambda: query(pipeline.ledger_url, "SELECT count(*) FROM notify_events")[:1] == [(len(versions),)],
             120, "a notify decision per report in the TLS ledger")
    wait_for(lambda: bool(query(pipeline.billing_url, "SELECT count(*) FROM billing_ledger")[:1])
             and query(pipeline.billing_url, "SELECT count(*) FROM billing_ledger")[0][0] > 0, 120,
             "billing rows in the TLS database")
    wait_for(lambda: len(consume_all(runtime.bootstrap, runtime.dlq, timeout=3)) >= 2, 30, "two dead letters")
    for process in runtime.processes:
        assert process.poll() is None, "every connector still running"

    names = pipeline.names
    dead_letters = consume_all(runtime.bootstrap, runtime.dlq, timeout=5)
    senders = {dict(m.headers())["__connect.errors.connector.name"].decode() for m in dead_letters}
    assert senders == {names["sink-billing"], names["sink-notify"]}
    statuses = {m.key().decode(): json.loads(m.value()) for m in consume_all(runtime.bootstrap, runtime.status)}
    for connector in names.values():
        assert statuses[f"status-task-{connector}-0"]["tasks"][0]["state"] == "RUNNING"
    for key in _warehouse_objects(s3_client, pipeline.bucket):  # data files and schema manifests
        head = s3_client.head_object(Bucket=pipeline.bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KMS_KEY_ID), key
    assert registry.state.requests > 0 and registry.state.refused == 0
    assert {pipeline.results + "-value", pipeline.reports + "-value"} <= set(registry.state.subjects)

    status = labconnect(["status", "--topic", runtime.status], secure)
    assert status.returncode == 0, status.stderr
    assert all(name in status.stdout for name in names.values())
    if listener != "sasl_ssl":
        return  # the tools share one client configuration path: the others once are enough (CI time)
    shown = labconnect(["dlq", "show", "--topic", runtime.dlq], secure)
    assert shown.returncode == 0, shown.stderr
    assert names["sink-billing"] in shown.stdout and names["sink-notify"] in shown.stdout
    for connector in ("sink-billing", "source-lis"):
        offsets = labconnect(["offsets", "get", connector, "--json"],
                             runtime.env(**pipeline.env(connector), **secure))
        assert offsets.returncode == 0, offsets.stderr
        assert json.loads(offsets.stdout), f"{connector} has stored positions"


def _refusals(secure: SecureListeners, rogue: CertificateAuthority) -> dict[str, tuple[dict[str, str], str, str]]:
    """Per case: the client settings, what the refusal must say, and the setting it must name."""
    stranger = rogue.issue("stranger", server=False)
    return {
        "wrong password": (secure.sasl_ssl_properties(password="not-the-password-7f3a"),
                           "SASL authentication error", "KAFKA_SASL_PASSWORD"),
        "untrusted broker certificate": ({**secure.sasl_ssl_properties(), "ssl.ca.location": str(rogue.cert)},
                                         "certificate verify failed", "KAFKA_SSL_CA_LOCATION"),
        "client certificate of another CA": (secure.mtls_properties(stranger), "bad certificate",
                                             "KAFKA_SSL_CERTIFICATE_LOCATION"),
    }


@pytest.mark.parametrize("case,connector", [("wrong password", "source-lis"),
                                            ("untrusted broker certificate", "sink-warehouse"),
                                            ("client certificate of another CA", "sink-notify")])
def test_a_refused_client_exits_2_naming_the_cause_and_the_setting(
        case: str, connector: str, kafka_secure: SecureListeners, rogue_ca: CertificateAuthority,
        pipeline: Pipeline, runtime: RuntimeEnv) -> None:
    props, cause, setting = _refusals(kafka_secure, rogue_ca)[case]
    started = time.monotonic()
    process = pipeline.start(connector, **client_environment(props))
    assert process.wait(30) == 2, runtime.log(connector)[-2000:]
    assert time.monotonic() - started < 30, "no retry loop before giving up"
    log = runtime.log(connector)
    assert cause in log and setting in log and "refused this client" in log
    assert kafka_secure.password not in log and "not-the-password-7f3a" not in log
    if case != "wrong password":
        return  # the operator tools judge a refusal with the same code: once is enough (CI time)

    tool = labconnect(["status", "--topic", runtime.status], client_environment(props))
    assert tool.returncode == 2, tool.stderr
    assert cause in tool.stderr and setting in tool.stderr
    assert "not-the-password-7f3a" not in tool.stderr + tool.stdout

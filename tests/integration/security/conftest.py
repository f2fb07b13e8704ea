"""What the security tests share: client settings per listener, TLS databases, the LIS pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devstack.kafka import SecureListeners, client_environment
from devstack.lis_simulator import FhirSimulator, SimReport, generate
from devstack.schema_registry import SchemaRegistry
from devstack.tls import CertificateAuthority
from tests.integration.conftest import RuntimeEnv

LISTENERS = ("sasl_ssl", "mtls")


def listener_env(secure: SecureListeners, listener: str) -> dict[str, str]:
    """The KAFKA_* variables that point a connector or tool at one secure listener, and nowhere else."""
    props = secure.sasl_ssl_properties() if listener == "sasl_ssl" else secure.mtls_properties()
    return client_environment(props)


def tls_database(server_url: str) -> str:
    """A new database on the TLS-only server; its URL keeps the sslmode/sslrootcert query."""
    base, _, query = server_url.partition("?")
    name = f"db_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


def query(url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    except sa.exc.SQLAlchemyError:  # the table is created by the connector's migration at its start
        return []
    finally:
        engine.dispose()


@pytest.fixture
def rogue_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA nobody trusts: its certificates must be refused."""
    return CertificateAuthority.create(tmp_path / "rogue", "rogue-ca")


@pytest.fixture
def schema_registry(test_ca: CertificateAuthority, tmp_path: Path) -> Iterator[tuple[SchemaRegistry, dict[str, str]]]:
    """An HTTPS schema registry with basic auth, and the SCHEMA_REGISTRY_* settings that reach it."""
    password = uuid.uuid4().hex
    registry = SchemaRegistry(test_ca.issue("schema-registry", server=True), "labconnect", password).start()
    user_info = tmp_path / "registry-user-info"
    user_info.write_text(f"labconnect:{password}\n")
    yield registry, {"SCHEMA_REGISTRY_URL": registry.url, "SCHEMA_REGISTRY_SSL_CA_LOCATION": str(test_ca.cert),
                     "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(user_info)}
    registry.stop()


@dataclass
class Pipeline:
    """The FHIR LIS simulator, source-lis and the three sinks of one test, with their topics and stores."""

    runtime: RuntimeEnv
    lis: FhirSimulator
    results: str
    reports: str
    patients: str
    bucket: str
    s3_endpoint: str
    billing_url: str
    ledger_url: str
    names: dict[str, str] = field(default_factory=dict)

    def publish(self, reports: int, seed: int = 15) -> list[SimReport]:
        versions = generate(seed=seed, reports=reports, preliminary_share=0, correction_share=0, cancel_share=0)
        self.lis.publish(versions)
        return versions

    def env(self, connector: str, **overrides: str | int) -> dict[str, str | int]:
        name = self.names.setdefault(connector, f"{connector}-{uuid.uuid4().hex[:8]}")
        common: dict[str, str | int] = {"CONNECTOR_NAME": name, "FLUSH_MAX_AGE_MS": 1000, "FLUSH_IDLE_MS": 300,
                                        "ERRORS_RETRY_DELAY_MAX_MS": 500}
        own: dict[str, str | int] = {
            "source-lis": {"LIS_MODE": "fhir", "FHIR_BASE_URL": self.lis.base_url, "FHIR_POLL_INTERVAL_MS": 300,
                           "FHIR_TIMEOUT_S": 5, "RESULTS_TOPIC": self.results, "REPORTS_TOPIC": self.reports,
                           "PATIENTS_TOPIC": self.patients},
            "sink-billing": {"TOPICS": self.reports, "BILLING_DATABASE_URL": self.billing_url},
            "sink-warehouse": {"TOPICS": self.results, "WAREHOUSE_URL": f"s3://{self.bucket}/warehouse",
                               "S3_ENDPOINT_URL": self.s3_endpoint, "S3_REGION": "us-east-1",
                               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
            "sink-notify": {"TOPICS": self.reports, "NOTIFY_CONTACTS_TOPIC": self.patients,
                            "NOTIFY_DATABASE_URL": self.ledger_url,
                            "NOTIFY_OUTBOX_PATH": str(self.runtime.tmp / "outbox.jsonl"),
                            # The simulated LIS day is 2026-01-01: its events count as recent.
                            "NOTIFY_MAX_EVENT_AGE_MS": 10 * 365 * 86_400_000, "NOTIFY_COMBINE_WINDOW_MS": 0,
                            "NOTIFY_QUIET_HOURS_START": "00:00", "NOTIFY_QUIET_HOURS_END": "00:00"},
        }[connector]
        return {**common, **own, **overrides}

    def start(self, connector: str, **overrides: str | int) -> Any:
        return self.runtime.start_real(connector, connector, **self.env(connector, **overrides))


@pytest.fixture
def pipeline(runtime: RuntimeEnv, make_topic: Callable[..., str], s3_endpoint: str, bucket: str,
             postgres_tls_url: str) -> Iterator[Pipeline]:
    lis = FhirSimulator(max_count=100)
    lis.start()
    yield Pipeline(runtime, lis, results=make_topic("lab-results", partitions=3),
                   reports=make_topic("lab-reports", partitions=3),
                   patients=make_topic("patients", partitions=3, config={"cleanup.policy": "compact"}),
                   bucket=bucket, s3_endpoint=s3_endpoint, billing_url=tls_database(postgres_tls_url),
                   ledger_url=tls_database(postgres_tls_url))
    lis.stop()

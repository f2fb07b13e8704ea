"""Session-wide real services and per-test Kafka topics.

Integration tests talk to a real Kafka broker, a real PostgreSQL server and moto's
S3 server, each started once per session as a plain process (see ``devstack``).
``KAFKA_BOOTSTRAP_SERVERS`` set in the environment means: use that cluster and
start no broker. Tests under ``tests/unit`` are marked ``unit``, tests under
``tests/integration`` are marked ``integration``; both run in CI.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def kafka_broker():  # type: ignore[no-untyped-def]
    """The broker started for this session (None with $KAFKA_BOOTSTRAP_SERVERS): plaintext for
    the tests, plus SASL_SSL and mutual-TLS listeners for the security tests (``.secure``)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    from devstack.kafka import start_broker

    broker = start_broker(secure=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker) -> str:  # type: ignore[no-untyped-def]
    """Bootstrap servers of a real broker's plaintext listener: $KAFKA_BOOTSTRAP_SERVERS, or the session's."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_secure(kafka_broker):  # type: ignore[no-untyped-def]
    """The session broker's SASL_SSL and mutual-TLS listeners (devstack.kafka.SecureListeners)."""
    if kafka_broker is None:
        pytest.skip("the security tests need the broker this session starts, not $KAFKA_BOOTSTRAP_SERVERS")
    return kafka_broker.secure


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A certificate authority made for this session (devstack.tls), for servers that speak TLS."""
    from devstack.tls import CertificateAuthority

    return CertificateAuthority.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(kafka_admin) -> Callable[..., str]:  # type: ignore[no-untyped-def]
    """Create a uniquely named topic for this test: ``make_topic("lab-results", partitions=3)``."""
    from confluent_kafka.admin import NewTopic

    def create(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        # Creation returns before every partition has a leader; tests must not race that.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metadata = kafka_admin.list_topics(name, timeout=10).topics[name]
            if metadata.error is None and len(metadata.partitions) == partitions and all(
                    p.leader >= 0 for p in metadata.partitions.values()):
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} has no leader after 30s")

    return create


@pytest.fixture
def topic(make_topic: Callable[..., str]) -> str:
    """A unique single-partition topic for this test."""
    return make_topic()


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server in a temporary directory (``.url`` is a SQLAlchemy URL)."""
    from devstack.postgres import start_postgres

    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    return str(postgres_server.url)


@pytest.fixture(scope="session")
def postgres_tls_url(test_ca) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A PostgreSQL server that accepts TLS connections only, and a URL verifying its
    certificate and host name against the session's CA (sslmode=verify-full)."""
    from devstack.postgres import start_postgres

    server = start_postgres(tls=test_ca.issue("postgres", server=True))
    try:
        yield f"{server.url}?sslmode=verify-full&sslrootcert={test_ca.cert}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of moto's S3 server running as its own process."""
    from devstack.s3 import start_s3

    server = start_s3()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )


@pytest.fixture
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    name = f"bucket-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    return name

"""A single-node Apache Kafka 4.x broker (KRaft: broker and controller in one JVM).

The broker's jars are resolved from Maven Central with Maven into a cache directory
outside the repository (``$LABCONNECT_CACHE``, default ``~/.cache/labconnect``), then
the storage is formatted and ``kafka.Kafka`` is started as a plain Java process.

    python -m devstack.kafka up [--port 9092] [--data DIR] [--secure]
    python -m devstack.kafka status
    python -m devstack.kafka down

With ``--secure`` (tests: :func:`start_broker` with ``secure=True``) the broker also listens
with SASL_SSL (SCRAM-SHA-512, a user created at format time with Kafka's own storage tool)
and with SSL requiring a client certificate, beside the plaintext listener; the CA and
certificates are made at start (:mod:`devstack.tls`).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import free_port, wait_for_port
from devstack.tls import Certificate, CertificateAuthority

KAFKA_VERSION = os.environ.get("LABCONNECT_KAFKA_VERSION", "4.1.1")
SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>labconnect.devstack</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{log_group}</groupId><artifactId>{log_artifact}</artifactId><version>{log_version}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


def cache_dir() -> Path:
    return Path(os.environ.get("LABCONNECT_CACHE", Path.home() / ".cache" / "labconnect"))


def state_dir() -> Path:
    """Where `up` leaves the pid and address of the broker it started."""
    return cache_dir() / "run"


def resolve_jars(version: str = KAFKA_VERSION) -> Path:
    """Return a directory holding the broker's jars, fetching them with Maven once."""
    target = cache_dir() / f"kafka-{version}"
    libs = target / "libs"
    stamp = target / ".complete"
    if stamp.exists():
        return libs
    target.mkdir(parents=True, exist_ok=True)
    group, artifact, log_version = SLF4J_BINDING
    (target / "pom.xml").write_text(
        _POM.format(version=version, log_group=group, log_artifact=artifact, log_version=log_version)
    )
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(target / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"],
        check=True,
    )
    stamp.write_text(version)
    return libs


@dataclass
class SecureListeners:
    """The broker's SASL_SSL and mutual-TLS listeners, and what a client needs for each."""

    sasl_ssl_port: int
    ssl_port: int
    ca: CertificateAuthority
    server: Certificate
    client: Certificate  # issued by ``ca``: accepted by the mutual-TLS listener
    keystore_password: str
    username: str = "labconnect"
    password: str = ""

    @classmethod
    def create(cls, directory: Path, ports: tuple[int, int] | None = None) -> SecureListeners:
        """A fresh CA and certificates in ``directory``; ``ports``: (SASL_SSL, SSL), free ones if None."""
        ca = CertificateAuthority.create(directory / "tls")
        sasl_ssl_port, ssl_port = ports or (free_port(), free_port())
        return cls(sasl_ssl_port=sasl_ssl_port, ssl_port=ssl_port, ca=ca, server=ca.issue("kafka-broker", server=True),
                   client=ca.issue("labconnect-client", server=False), keystore_password=secrets.token_hex(12),
                   password=secrets.token_hex(16))

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def sasl_ssl_properties(self, password: str | None = None) -> dict[str, str]:
        """librdkafka properties for the SASL_SSL listener (``password``: another one, to see it refused)."""
        return {"bootstrap.servers": self.sasl_ssl_bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": self.username,
                "sasl.password": self.password if password is None else password,
                "ssl.ca.location": str(self.ca.cert)}

    def mtls_properties(self, client: Certificate | None = None) -> dict[str, str]:
        """librdkafka properties for the mutual-TLS listener, presenting ``client`` (default: one it trusts)."""
        client = client or self.client
        return {"bootstrap.servers": self.ssl_bootstrap, "security.protocol": "SSL",
                "ssl.ca.location": str(self.ca.cert), "ssl.certificate.location": str(client.cert),
                "ssl.key.location": str(client.key)}

    def broker_properties(self) -> list[str]:
        keystore = self.ca.pkcs12(self.server, self.keystore_password)
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.ssl.ssl.client.auth=required",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={keystore}",
            f"ssl.keystore.password={self.keystore_password}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca.cert}",
        ]

    def scram_format_arguments(self) -> list[str]:
        """kafka-storage format's KIP-900 option: the SCRAM user exists from the first start."""
        return ["--add-scram", f"SCRAM-SHA-512=[name={self.username},password={self.password}]"]


def client_environment(properties: dict[str, str]) -> dict[str, str]:
    """The KAFKA_* variables that give a connector or operator tool these client properties."""
    return {"KAFKA_" + name.upper().replace(".", "_"): value for name, value in properties.items()}


@dataclass
class KafkaBroker:
    """A running broker process and where to reach it."""

    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    owns_data_dir: bool = False
    secure: SecureListeners | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def properties(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        if self.secure is not None:
            listeners += [f"SASL_SSL://127.0.0.1:{self.secure.sasl_ssl_port}",
                          f"SSL://127.0.0.1:{self.secure.ssl_port}"]
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            # Brokers talk among themselves in plaintext: one node, and the tests' own listener.
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            *(self.secure.broker_properties() if self.secure is not None else []),
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"log.dirs={self.data_dir / 'log'}",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created explicitly, as in production.
            "auto.create.topics.enable=false",
            "num.partitions=1",
            "",
        ])

    def start(self, timeout: float = 90.0) -> None:
        libs = resolve_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self.properties())
        (self.data_dir / "log4j.properties").write_text(_LOG4J)
        classpath = f"{libs}/*"
        java = os.environ.get("JAVA", "java")
        log_opt = f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}"
        if not (self.data_dir / "log" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                [java, log_opt, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 # "=": a random cluster id may start with "-", which argparse would take for an option
                 f"--cluster-id={cluster_id}", "-c", str(props),
                 *(self.secure.scram_format_arguments() if self.secure is not None else [])],
                check=True, stdout=subprocess.DEVNULL,
            )
        heap = os.environ.get("LABCONNECT_KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g")
        log_file = open(self.data_dir / "broker.log", "ab")
        self.process = subprocess.Popen(
            [java, *heap.split(), log_opt, "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Ready means: an AdminClient metadata request answers."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        wait_for_port(self.port, timeout)
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.process.returncode}; see {self.data_dir}/broker.log")
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka did not answer metadata within {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # controlled shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_broker(port: int | None = None, data_dir: Path | None = None, secure: bool = False) -> KafkaBroker:
    """Start a broker on the given port (a free one if None) and wait until it answers;
    ``secure``: with the SASL_SSL and mutual-TLS listeners too (``broker.secure``)."""
    owns = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="kafka-"))
    broker = KafkaBroker(
        port=port or free_port(),
        controller_port=free_port(),
        data_dir=data_dir,
        owns_data_dir=owns,
        secure=SecureListeners.create(data_dir) if secure else None,
    )
    broker.start()
    return broker


def _pid_file() -> Path:
    return state_dir() / "kafka.pid"


def _cli_up(args: argparse.Namespace) -> int:
    if _pid_file().exists() and _alive(int(_pid_file().read_text().split()[0])):
        print(f"Kafka already running: {_pid_file().read_text().split()[1]}")
        return 0
    started = time.monotonic()
    data_dir = Path(args.data) if args.data else state_dir() / "kafka-data"
    if not args.data and data_dir.exists():
        shutil.rmtree(data_dir)
    # Next to the plaintext port and the controller's (port + 1), so the printed settings stay put.
    secure = SecureListeners.create(data_dir, (args.port + 2, args.port + 3)) if args.secure else None
    broker = KafkaBroker(port=args.port, controller_port=args.port + 1, data_dir=data_dir, secure=secure)
    broker.start()
    state_dir().mkdir(parents=True, exist_ok=True)
    assert broker.process is not None
    _pid_file().write_text(f"{broker.process.pid} {broker.bootstrap_servers}\n")
    print(f"Kafka {KAFKA_VERSION} ready on {broker.bootstrap_servers} in {time.monotonic() - started:.1f}s")
    if secure is not None:
        for title, props in (("SASL_SSL (SCRAM-SHA-512)", secure.sasl_ssl_properties()),
                             ("mutual TLS", secure.mtls_properties())):
            print(f"\n{title}:")
            for name, value in client_environment(props).items():
                print(f"  {name}={value}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _cli_down(_: argparse.Namespace) -> int:
    if not _pid_file().exists():
        print("Kafka is not running")
        return 0
    pid = int(_pid_file().read_text().split()[0])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _pid_file().unlink()
    print("Kafka stopped")
    return 0


def _cli_status(_: argparse.Namespace) -> int:
    if _pid_file().exists():
        pid_text, address = _pid_file().read_text().split()
        if _alive(int(pid_text)):
            print(f"Kafka running on {address} (pid {pid_text})")
            return 0
    print("Kafka is not running")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka-local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="fetch (once) and start the broker")
    up.add_argument("--port", type=int, default=int(os.environ.get("LABCONNECT_KAFKA_PORT", "9092")))
    up.add_argument("--data", help="data directory (default: a fresh one in the cache)")
    up.add_argument("--secure", action="store_true",
                    help="also listen with SASL_SSL (SCRAM-SHA-512) on PORT+2 and mutual TLS on PORT+3; "
                    "prints the client settings")
    up.set_defaults(run=_cli_up)
    sub.add_parser("down", help="stop the broker").set_defaults(run=_cli_down)
    sub.add_parser("status", help="is it running?").set_defaults(run=_cli_status)
    sub.add_parser("fetch", help="only resolve the jars").set_defaults(run=lambda _: (resolve_jars(), 0)[1])
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

"""Everything the drill runs, as real processes it can kill: the broker, PostgreSQL, moto S3
behind a fault proxy, the provider server, the LIS simulator and the five connector processes
(source-lis over FHIR, source-lis over MLLP, sink-billing, sink-warehouse, sink-notify)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.kafka import KafkaBroker, start_broker
from devstack.lis_simulator.fhir_server import FhirSimulator
from devstack.ports import free_port
from devstack.postgres import PostgresServer, start_postgres
from devstack.providers import ProviderServer, start_providers
from devstack.s3 import S3Server, start_s3
from devstack.s3_fault_proxy import FaultProxy
from devstack.drill.workload import FHIR_SOURCE, HL7_SOURCE

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "drill-warehouse"
ONCALL_PHONE = "+15550009999"
CONNECTORS = ("source-lis-fhir", "source-lis-hl7", "sink-billing", "sink-warehouse", "sink-notify")
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Stack:
    work: Path
    broker: KafkaBroker
    postgres: PostgresServer
    s3: S3Server
    s3_proxy: FaultProxy
    providers: ProviderServer
    fhir: FhirSimulator
    mllp_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def notify_url(self) -> str:
        return f"sqlite:///{self.work / 'notify.db'}"

    def s3_client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    # -- connectors ----------------------------------------------------------------------------------
    def env(self, name: str) -> dict[str, str]:
        """The environment of one connector process (also used for its replay)."""
        runtime = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "CONNECTOR_NAME": name, "LOG_FORMAT": "json",
                   "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                   "FLUSH_MAX_AGE_MS": "2000", "FLUSH_IDLE_MS": "1000"}
        if name == "source-lis-fhir":
            return {**runtime, "LIS_MODE": "fhir", "LIS_NAME": FHIR_SOURCE, "FHIR_BASE_URL": self.fhir.base_url,
                    "FHIR_POLL_INTERVAL_MS": "1000", "FHIR_TIMEOUT_S": "10", "FHIR_REQUEST_DEADLINE_S": "20"}
        if name == "source-lis-hl7":
            return {**runtime, "LIS_MODE": "hl7-mllp", "LIS_NAME": HL7_SOURCE, "MLLP_PORT": str(self.mllp_port),
                    "HL7_ARCHIVE_DIR": str(self.work / "hl7-archive"), "HL7_MAX_BATCH": "50"}
        if name == "sink-billing":
            return {**runtime, "TOPICS": "lab-reports", "BILLING_DATABASE_URL": self.postgres.url}
        if name == "sink-warehouse":
            # The headers are kept so a replayed copy of a record (header replay: true) is told apart.
            return {**runtime, **AWS, "TOPICS": "lab-results", "WAREHOUSE_URL": f"s3://{BUCKET}/lake",
                    "S3_ENDPOINT_URL": self.s3_proxy.endpoint_url, "WAREHOUSE_INCLUDE_HEADERS": "true"}
        if name == "sink-notify":
            return {**runtime, "TOPICS": "lab-reports", "NOTIFY_CONTACTS_TOPIC": "patients",
                    "NOTIFY_DATABASE_URL": self.notify_url,
                    "NOTIFY_SMS_PROVIDER": "twilio", "TWILIO_BASE_URL": self.providers.url,
                    "TWILIO_ACCOUNT_SID": self.providers.sid, "TWILIO_AUTH_TOKEN": self.providers.token,
                    "TWILIO_FROM": "+15550000000", "NOTIFY_EMAIL_PROVIDER": "sendgrid",
                    "SENDGRID_BASE_URL": self.providers.url, "SENDGRID_API_KEY": self.providers.api_key,
                    "SENDGRID_FROM": "lab@example.org", "NOTIFY_CRITICAL_SMS_TO": ONCALL_PHONE,
                    # Every final report may go at once: no quiet hours, caps or combining window
                    # stand between a report and its message, so "exactly once" is checkable.
                    "NOTIFY_COMBINE_WINDOW_MS": "0", "NOTIFY_QUIET_HOURS_START": "00:00",
                    "NOTIFY_QUIET_HOURS_END": "00:00", "NOTIFY_SMS_MAX_PER_DAY": "1000",
                    "NOTIFY_SMS_MAX_PER_WEEK": "1000", "NOTIFY_EMAIL_MAX_PER_DAY": "1000",
                    "NOTIFY_EMAIL_MAX_PER_WEEK": "1000", "NOTIFY_DISPATCH_INTERVAL_MS": "100"}
        raise KeyError(name)

    def start_connector(self, name: str) -> subprocess.Popen[bytes]:
        kind = "source-lis" if name.startswith("source-lis") else name
        log = open(self.work / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "common", "run", kind], cwd=self.work,
                                   env={**os.environ, "PYTHONPATH": str(ROOT), **self.env(name)},
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = process
        return process

    def kill_connector(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def replay(self, names: tuple[str, ...], since: str, timeout: float) -> dict[str, int | None]:
        """`labconnect replay source-lis --since ...` with each live connector's environment, at once;
        the exit code of each (None: still running after ``timeout``, then killed)."""
        processes = {}
        for name in names:
            with open(self.work / "logs" / f"{name}-replay.log", "ab") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "common", "replay", "source-lis", "--since", since], cwd=self.work,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **self.env(name)}, stdout=log, stderr=subprocess.STDOUT)
        codes: dict[str, int | None] = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[name] = None
        return codes

    # -- the broker ----------------------------------------------------------------------------------
    def kill_broker(self) -> None:
        assert self.broker.process is not None
        os.kill(self.broker.process.pid, signal.SIGKILL)
        self.broker.process.wait()

    def restart_broker(self) -> None:
        """Same ports, same data directory: the broker recovers its log as after a power cut."""
        self.broker.start(timeout=120)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stop in (self.fhir.stop, self.providers.stop, self.s3_proxy.stop, self.s3.stop, self.postgres.stop,
                     self.broker.stop):
            try:
                stop()
            except Exception as exc:  # a service already gone must not hide the others' cleanup
                print(f"  stopping: {exc}", file=sys.stderr)


def start_stack(work: Path) -> Stack:
    """Start every service (not the connectors) with fresh data under ``work``."""
    from common.topics import STANDARD_TOPICS, create_topics

    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "hl7-archive").mkdir(exist_ok=True)
    broker = start_broker(data_dir=work / "kafka")
    started: list[Any] = [broker]
    try:
        create_topics(broker.bootstrap_servers, STANDARD_TOPICS)
        postgres = start_postgres()
        started.append(postgres)
        s3 = start_s3()
        started.append(s3)
        proxy = FaultProxy(s3.endpoint_url)
        proxy.start()
        started.append(proxy)
        providers = start_providers()
        started.append(providers)
        fhir = FhirSimulator()
        fhir.start(0)
        stack = Stack(work, broker, postgres, s3, proxy, providers, fhir, free_port())
        stack.s3_client().create_bucket(Bucket=BUCKET)
        return stack
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise

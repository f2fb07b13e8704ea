"""A local SMS/e-mail provider server for the session, and sink-notify processes per test."""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devstack.providers import ProviderServer, start_providers
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import produce

LAB_REPORT = "com.drdangslab.events.LabReport"
PATIENT = "com.drdangslab.events.PatientContact"


@pytest.fixture(scope="session")
def provider_server() -> Iterator[ProviderServer]:
    server = start_providers()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def providers(provider_server: ProviderServer) -> ProviderServer:
    provider_server.reset()
    return provider_server


def now_ms() -> int:
    return int(time.time() * 1000)


def report(patient: str, accession: str, status: str = "final", *, critical: bool = False,
           version: int = 1, timestamp: int | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lis|{accession}|{status}|{version}")),
        "event_type": "REPORT_" + status.upper(), "timestamp": timestamp or now_ms(), "version": version,
        "patient_id": patient, "accession": accession, "test_code": "58410-2", "test_name": "CANARY-TEST-NAME",
        "report_status": status, "result_count": 3, "critical": critical, "ordering_provider_id": "DR-7",
        "observed_time": None, "source_system": "lis", "source_message_id": f"MSG-{accession}-{version}",
        "metadata": {},
    }


def contact(patient: str, *, phone: str | None = None, email: str | None = None, sms: bool = True,
            email_consent: bool = False, zone: str = "UTC") -> dict[str, Any]:
    return {"patient_id": patient, "timestamp": now_ms(), "phone": phone or phone_of(patient),
            "email": email, "sms_consent": sms, "email_consent": email_consent, "time_zone": zone,
            "language": "en", "source_system": "lis"}


def phone_of(patient: str) -> str:
    return "+1555" + str(zlib.crc32(patient.encode()) % 10**7).zfill(7)


@dataclass
class NotifyRun:
    """Topics, ledger and provider of one test; ``start`` runs sink-notify as a real process."""

    runtime: RuntimeEnv
    providers: ProviderServer
    reports: str
    patients: str
    ledger_url: str
    settings: dict[str, str] = field(default_factory=dict)
    started: int = 0

    def env(self, **overrides: str | int) -> dict[str, str]:
        base = {
            "CONNECTOR_NAME": f"notify-{self.reports}", "TOPICS": self.reports,
            "NOTIFY_CONTACTS_TOPIC": self.patients, "NOTIFY_DATABASE_URL": self.ledger_url,
            "NOTIFY_SMS_PROVIDER": "twilio", "TWILIO_BASE_URL": self.providers.url, "TWILIO_ACCOUNT_SID": "ACtest",
            "TWILIO_AUTH_TOKEN": "test-token", "TWILIO_FROM": "+15550000000",
            "NOTIFY_EMAIL_PROVIDER": "sendgrid", "SENDGRID_BASE_URL": self.providers.url,
            "SENDGRID_API_KEY": "SG.test", "SENDGRID_FROM": "lab@example.org",
            "NOTIFY_COMBINE_WINDOW_MS": "0", "NOTIFY_QUIET_HOURS_START": "00:00", "NOTIFY_QUIET_HOURS_END": "00:00",
            "NOTIFY_SMS_MAX_PER_DAY": "100", "NOTIFY_SMS_MAX_PER_WEEK": "100",
            "NOTIFY_DISPATCH_INTERVAL_MS": "100", "FLUSH_IDLE_MS": "200", "FLUSH_MAX_AGE_MS": "1000",
        }
        return {**base, **self.settings, **{k: str(v) for k, v in overrides.items()}}

    def start(self, **overrides: str | int):  # type: ignore[no-untyped-def]
        self.started += 1
        return self.runtime.start_real("sink-notify", f"notify-{self.started}", **self.env(**overrides))

    def produce_contacts(self, contacts: Iterable[dict[str, Any]]) -> None:
        produce(self.runtime.bootstrap, self.patients, [(c["patient_id"], c) for c in contacts], PATIENT)

    def produce_reports(self, reports: Iterable[dict[str, Any]]) -> None:
        produce(self.runtime.bootstrap, self.reports, [(r["patient_id"], r) for r in reports], LAB_REPORT)

    def ledger(self, sql: str) -> list[Any]:
        engine = sa.create_engine(self.ledger_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql)))
        except sa.exc.OperationalError:
            return []
        finally:
            engine.dispose()

    def ledger_execute(self, sql: str) -> None:
        engine = sa.create_engine(self.ledger_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()

    def logs(self) -> str:
        return "".join(self.runtime.log(f"notify-{n}") for n in range(1, self.started + 1))


@pytest.fixture
def notify(runtime: RuntimeEnv, providers: ProviderServer, make_topic: Callable[..., str],
           tmp_path: Path) -> NotifyRun:
    return NotifyRun(runtime, providers, reports=make_topic("lab-reports", partitions=3),
                     patients=make_topic("patients", partitions=3, config={"cleanup.policy": "compact"}),
                     ledger_url=f"sqlite:///{tmp_path / 'notify.db'}")

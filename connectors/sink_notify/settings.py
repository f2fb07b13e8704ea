"""Settings of the notification sink (environment variables, see ``common.config``).

Secrets (``TWILIO_AUTH_TOKEN``, ``SENDGRID_API_KEY``) can come from files via ``*_FILE``.
The defaults follow the healthcare texting rules: 1 SMS a day and 3 a week per patient,
no texts between 21:00 and 08:00 in the patient's time zone, nothing older than a week.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common import SinkSettings
from common.database import DatabaseUrl

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(:[0-5]\d)?$")
CHANNELS = ("sms", "email")


class NotifySettings(SinkSettings):
    """Which events to read, where the ledger is, how and when to reach patients."""

    topics: str = Field("lab-reports", description="Comma-separated topics of LabReport events")
    notify_contacts_topic: str = Field("patients", min_length=1,
                                       description="compacted topic of PatientContact records")
    notify_database_url: DatabaseUrl = Field("sqlite:///notify.db", description="SQLAlchemy URL of the ledger")
    notify_migrate_on_start: bool = Field(True, description="run the Alembic migrations when the task starts")

    notify_lab_name: str = Field("Your lab", min_length=1, max_length=40, description="sender name in messages")
    notify_portal_url: str = Field("https://portal.example.org", min_length=1, max_length=40,
                                   description="where patients log in (in every message)")
    notify_template_dir: str | None = Field(None, description="operator templates <dir>/<lang>/<kind>.<channel>.j2")
    notify_channels: str = Field("sms,email", description="patient channels in order of preference; the first "
                                 "one the patient consented to and has an address for is used")

    notify_combine_window_ms: int = Field(300_000, ge=0, description="reports of one patient within this window "
                                          "share one message")
    notify_max_event_age_ms: int = Field(7 * 86_400_000, ge=1, description="older report events notify nobody")
    notify_contact_wait_ms: int = Field(86_400_000, ge=0, description="how long a message waits for its "
                                        "patient's contact record")
    notify_quiet_hours_start: str = Field("21:00", description="no patient message from this local time…")
    notify_quiet_hours_end: str = Field("08:00", description="…until this local time (patient's time zone)")
    notify_sms_max_per_day: int = Field(1, ge=1)
    notify_sms_max_per_week: int = Field(3, ge=1)
    notify_email_max_per_day: int = Field(3, ge=1)
    notify_email_max_per_week: int = Field(10, ge=1)

    notify_sms_provider: Literal["file", "twilio"] = "file"
    notify_email_provider: Literal["file", "sendgrid"] = "file"
    notify_outbox_path: str = Field("notify-outbox.jsonl", description="file provider: one JSON line per message")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = Field(None, description="secret")
    twilio_from: str | None = Field(None, description="sending number (E.164)…")
    twilio_messaging_service_sid: str | None = Field(None, description="…or a Messaging Service")
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_api_key: str | None = Field(None, description="secret")
    sendgrid_from: str | None = Field(None, description="sender address")
    notify_idempotency_header: str = Field("Idempotency-Key", description="header carrying each message's key; "
                                           "empty: none")
    notify_unconfirmed_sends: Literal["resend", "hold"] = Field(
        "resend", description="a send interrupted by a crash: send again with the same key, or hold it for a person")

    notify_critical_sms_to: str | None = Field(None, description="on-call number for critical-value alerts")
    notify_critical_email_to: str | None = Field(None, description="on-call address for critical-value alerts")

    notify_max_in_flight: int = Field(64, ge=1, le=1024, description="sends in flight at once")
    notify_sms_rate_per_s: float = Field(0.0, ge=0, description="client-side limit, messages/s (0: none)")
    notify_email_rate_per_s: float = Field(0.0, ge=0, description="client-side limit, messages/s (0: none)")
    notify_send_timeout_ms: int = Field(10_000, ge=100)
    notify_retry_budget_ms: int = Field(6 * 3_600_000, ge=0, description="how long a send is retried on 5xx, "
                                        "timeouts and 429 before it fails")
    notify_dispatch_interval_ms: int = Field(200, ge=10, description="how often due messages are looked for")
    notify_max_backlog: int = Field(50_000, ge=1, description="unsent due messages before intake pauses")

    @property
    def topic_list(self) -> list[str]:
        reports = [t.strip() for t in self.topics.split(",") if t.strip()]
        return [*reports, self.notify_contacts_topic] if self.notify_contacts_topic not in reports else reports

    @property
    def channel_preference(self) -> list[str]:
        return [c.strip() for c in self.notify_channels.split(",") if c.strip()]

    @field_validator("notify_channels")
    @classmethod
    def _channels(cls, value: str) -> str:
        names = [c.strip() for c in value.split(",") if c.strip()]
        if not names or any(name not in CHANNELS for name in names):
            raise ValueError("a comma-separated list of sms, email")
        return value

    @field_validator("notify_quiet_hours_start", "notify_quiet_hours_end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value.strip()):
            raise ValueError("a local time HH:MM or HH:MM:SS (24-hour)")
        return value.strip()


    @model_validator(mode="after")
    def _providers_configured(self) -> NotifySettings:
        missing = []
        if self.notify_sms_provider == "twilio":
            missing += [name for name in ("twilio_account_sid", "twilio_auth_token") if not getattr(self, name)]
            if bool(self.twilio_from) == bool(self.twilio_messaging_service_sid):
                missing.append("exactly one of TWILIO_FROM, TWILIO_MESSAGING_SERVICE_SID")
        if self.notify_email_provider == "sendgrid":
            missing += [name for name in ("sendgrid_api_key", "sendgrid_from") if not getattr(self, name)]
        if missing:
            raise ValueError("the configured providers need " + ", ".join(m.upper() for m in missing))
        return self

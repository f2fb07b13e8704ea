"""Settings of sink-notify: defaults that follow the texting rules, secrets from files, every bad
variable named, and the ledger's schema as the migrations build it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from common.config import load_settings
from common.errors import ConfigError
from connectors.sink_notify import tables
from connectors.sink_notify.schema import ledger_engine, upgrade
from connectors.sink_notify.settings import NotifySettings


def test_defaults_consume_reports_and_contacts_with_the_texting_rules() -> None:
    settings = load_settings(NotifySettings, {})
    assert settings.topic_list == ["lab-reports", "patients"]
    assert (settings.notify_sms_max_per_day, settings.notify_sms_max_per_week) == (1, 3)
    assert (settings.notify_quiet_hours_start, settings.notify_quiet_hours_end) == ("21:00", "08:00")
    assert (settings.notify_sms_provider, settings.notify_email_provider) == ("file", "file")


def test_provider_secrets_come_from_files_and_are_redacted(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("tw-secret\n")
    settings = load_settings(NotifySettings, {
        "NOTIFY_SMS_PROVIDER": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN_FILE": str(secret),
        "TWILIO_MESSAGING_SERVICE_SID": "MG1"})
    assert settings.twilio_auth_token == "tw-secret"
    assert settings.redacted()["TWILIO_AUTH_TOKEN"] == "********"


def test_every_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(NotifySettings, {"NOTIFY_CHANNELS": "sms,pigeon", "NOTIFY_QUIET_HOURS_START": "9pm",
                                       "NOTIFY_SMS_MAX_PER_DAY": "0", "NOTIFY_DATABASE_URL": "mysql://x/y",
                                       "NOTIFY_SMS_PROVIDER": "twilio"})
    text = str(info.value)
    for name in ("NOTIFY_CHANNELS", "NOTIFY_QUIET_HOURS_START", "NOTIFY_SMS_MAX_PER_DAY", "NOTIFY_DATABASE_URL",
                 "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"):
        assert name in text


def test_the_migrated_ledger_matches_the_table_definitions(tmp_path: Path) -> None:
    engine = ledger_engine(f"sqlite:///{tmp_path / 'notify.db'}")
    upgrade(engine)
    found = inspect(engine)
    for table in tables.metadata.sorted_tables:
        assert {c["name"] for c in found.get_columns(table.name)} == {c.name for c in table.columns}, table.name
    engine.dispose()

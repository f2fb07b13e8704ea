"""Settings: modes, secrets from files, clear errors naming every bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_settings
from common.errors import ConfigError
from connectors.source_lis.settings import LisSettings


def test_fhir_mode_with_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    settings = load_settings(LisSettings, {"LIS_MODE": "fhir", "FHIR_BASE_URL": "https://lis.example/fhir/",
                                           "FHIR_AUTH_TOKEN_FILE": str(secret)})
    assert settings.fhir_auth_token == "s3cret"
    assert settings.fhir_base_url == "https://lis.example/fhir"
    assert settings.redacted()["FHIR_AUTH_TOKEN"] == "********"
    assert (settings.results_topic, settings.reports_topic, settings.patients_topic) == \
        ("lab-results", "lab-reports", "patients")


def test_every_bad_variable_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(LisSettings, {"LIS_MODE": "ftp", "HL7_ENCODING": "klingon", "FHIR_PAGE_SIZE": "0",
                                    "HL7_TIME_ZONE": "Mars/Olympus"})
    text = str(info.value)
    for var in ("LIS_MODE", "HL7_ENCODING", "FHIR_PAGE_SIZE", "HL7_TIME_ZONE"):
        assert var in text


@pytest.mark.parametrize(("env", "fragment"), [
    ({"LIS_MODE": "fhir"}, "FHIR_BASE_URL is required"),
    ({"LIS_MODE": "fhir", "FHIR_BASE_URL": "lis.example"}, "http"),
    ({"LIS_MODE": "fhir", "FHIR_BASE_URL": "http://x", "FHIR_AUTH_TOKEN": "t", "FHIR_USERNAME": "u",
      "FHIR_PASSWORD": "p"}, "not both"),
    ({"LIS_MODE": "fhir", "FHIR_BASE_URL": "http://x", "FHIR_USERNAME": "u"}, "go together"),
    ({}, "LIS_MODE: is required"),
])
def test_mode_specific_requirements(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(LisSettings, env)


def test_hl7_mode_defaults() -> None:
    settings = load_settings(LisSettings, {"LIS_MODE": "hl7-mllp"})
    assert (settings.mllp_host, settings.mllp_port, settings.hl7_encoding) == ("127.0.0.1", 2575, "utf-8")


def test_the_mllp_frame_cap_defaults_to_what_the_producer_can_send(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(LisSettings, {"LIS_MODE": "hl7-mllp"})
    assert settings.kafka_message_limit() == settings.mllp_frame_cap() == 1_000_000 - 16 * 1024
    assert (settings.mllp_read_timeout_ms, settings.mllp_idle_timeout_ms, settings.mllp_max_connections,
            settings.mllp_peer_max_rejects) == (60_000, 600_000, 100, 20)
    monkeypatch.setenv("KAFKA_MESSAGE_MAX_BYTES", "4000000")  # the producer's message.max.bytes
    assert settings.mllp_frame_cap() == 4_000_000 - 16 * 1024
    raised = load_settings(LisSettings, {"LIS_MODE": "hl7-mllp", "MLLP_MAX_MESSAGE_BYTES": "16777216"})
    assert raised.mllp_frame_cap() == 16_777_216 and raised.kafka_message_limit() == 4_000_000 - 16 * 1024


def test_every_bad_mllp_limit_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(LisSettings, {"LIS_MODE": "hl7-mllp", "MLLP_MAX_MESSAGE_BYTES": "10", "MLLP_READ_TIMEOUT_MS": "x",
                                    "MLLP_IDLE_TIMEOUT_MS": "0", "MLLP_MAX_CONNECTIONS": "0",
                                    "MLLP_PEER_MAX_REJECTS": "-1"})
    for var in ("MLLP_MAX_MESSAGE_BYTES", "MLLP_READ_TIMEOUT_MS", "MLLP_IDLE_TIMEOUT_MS", "MLLP_MAX_CONNECTIONS",
                "MLLP_PEER_MAX_REJECTS"):
        assert var in str(info.value)

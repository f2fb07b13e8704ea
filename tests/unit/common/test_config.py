from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import SinkSettings, SourceSettings, load_settings
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_every_bad_variable_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SinkSettings, {"TASK_ID": "x", "ERRORS_TOLERANCE": "some", "FLUSH_MAX_RECORDS": "0"})
    names = [p.split(":")[0] for p in caught.value.problems]
    assert sorted(names) == ["ERRORS_TOLERANCE", "FLUSH_MAX_RECORDS", "TASK_ID", "TOPICS"]


def test_kafka_variables_pass_through_as_client_properties() -> None:
    settings = load_settings(SourceSettings, {"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    props = settings.kafka_properties({"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                       "KAFKA_BOOTSTRAP_SERVERS": "b:9092"})
    assert props == {"bootstrap.servers": "b:9092", "sasl.mechanism": "SCRAM-SHA-512", "security.protocol": "SASL_SSL"}


def test_secret_from_file_variable(tmp_path: Path) -> None:
    secret = tmp_path / "topics"
    secret.write_text("a,b\n")
    settings = load_settings(SinkSettings, {"TOPICS_FILE": str(secret)})
    assert settings.topic_list == ["a", "b"]


def test_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOPICS_FILE"):
        load_settings(SinkSettings, {"TOPICS_FILE": str(tmp_path / "missing")})


def test_redacted_config_hides_secrets() -> None:
    settings = load_settings(SourceSettings, {"SCHEMA_REGISTRY_URL": "https://user:pw@registry:8081"})
    shown = settings.redacted()
    assert "pw" not in str(shown["SCHEMA_REGISTRY_URL"])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


def test_cli_help_lists_the_connectors() -> None:
    result = _cli("run", "--help", env={})
    assert result.returncode == 0
    for name in ("source-lis", "sink-notify", "sink-billing", "sink-warehouse"):
        assert name in result.stdout


def test_cli_bad_config_exits_2_with_one_line_naming_the_variable() -> None:
    result = _cli("run", "sink-billing", env={"BILLING_DATABASE_URL": "not-a-url", "TASK_ID": "-1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "BILLING_DATABASE_URL" in lines[0] and "TASK_ID" in lines[0]

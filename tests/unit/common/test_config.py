from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import field_validator, model_validator

from common.config import SinkSettings, SourceSettings, WorkerSettings, client_properties, load_settings
from common.errors import REDACTED, ConfigError

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


def test_log_level_is_a_level_name_in_any_case() -> None:
    assert load_settings(SourceSettings, {"LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load_settings(SourceSettings, {"LOG_LEVEL": "warn"}).log_level == "WARNING"
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, {"LOG_LEVEL": "verbose"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["LOG_LEVEL"]


def test_unreadable_kafka_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, {"KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})
    assert [p.split(":")[0] for p in caught.value.problems] == ["KAFKA_SASL_PASSWORD_FILE"]


def test_kafka_variable_the_client_does_not_know_is_a_config_error_naming_it() -> None:
    env = {"KAFKA_PORT": "tcp://10.0.0.1:9092", "KAFKA_SECURITY_PROTOCOL": "hunter2", "TASK_ID": "x"}
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, env)
    named = sorted(p.split(":")[0] for p in caught.value.problems)
    assert named == ["KAFKA_PORT", "KAFKA_SECURITY_PROTOCOL", "TASK_ID"]
    assert "hunter2" not in str(caught.value)  # a mistyped value may be a secret


def test_kafka_properties_the_client_refuses_together_name_their_variables(tmp_path: Path) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match="KAFKA_SSL_CA_LOCATION"):
        load_settings(SourceSettings, env)


def test_sasl_ssl_properties_are_accepted_without_connecting() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    settings = load_settings(SourceSettings, env)
    assert settings.kafka_properties(env)["security.protocol"] == "SASL_SSL"


class _PairedSettings(WorkerSettings):
    paired_mode: str = "plain"
    paired_url: str | None = None
    paired_port: int = 1

    @field_validator("paired_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("http"):
            raise ValueError("must start with http")
        return value

    @model_validator(mode="after")
    def _mode_needs_url(self) -> _PairedSettings:
        if self.paired_mode == "remote" and not self.paired_url:
            raise ValueError("PAIRED_URL is required when PAIRED_MODE=remote")
        return self


def test_rules_across_settings_are_checked_even_when_a_field_fails() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_PairedSettings, {"PAIRED_MODE": "remote", "PAIRED_PORT": "abc"})
    assert caught.value.problems[0].startswith("PAIRED_PORT:")
    assert caught.value.problems[1:] == ["PAIRED_URL is required when PAIRED_MODE=remote"]


def test_rules_across_settings_are_checked_when_a_field_from_os_environ_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRED_MODE", "remote")
    monkeypatch.setenv("PAIRED_PORT", "abc")
    monkeypatch.delenv("PAIRED_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(_PairedSettings)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "PAIRED_PORT", "PAIRED_URL is required when PAIRED_MODE=remote"]


def test_a_rule_about_a_failed_setting_is_not_reported_twice() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_PairedSettings, {"PAIRED_MODE": "remote", "PAIRED_URL": "ftp://x"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["PAIRED_URL"]


def test_client_properties_for_the_tools(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "ops", "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "ops",
                "sasl.password": "s3cret"}
    assert client_properties(None, env) == {"bootstrap.servers": "b:9093", **expected}
    assert client_properties("flag:9092", env) == {"bootstrap.servers": "flag:9092", **expected}
    assert client_properties(None, {}) == {"bootstrap.servers": "127.0.0.1:9092"}


def test_client_properties_name_a_bad_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_PORT"):
        client_properties("b:9092", {"KAFKA_PORT": "tcp://10.0.0.1:9092"})
    with pytest.raises(ConfigError, match="KAFKA_SSL_KEY_PASSWORD_FILE"):
        client_properties("b:9092", {"KAFKA_SSL_KEY_PASSWORD_FILE": str(tmp_path / "missing")})


def test_redacted_config_hides_secrets() -> None:
    settings = load_settings(SourceSettings, {"SCHEMA_REGISTRY_URL": "https://user:pw@registry:8081"})
    shown = settings.redacted()
    assert "pw" not in str(shown["SCHEMA_REGISTRY_URL"])


def test_redacted_config_hides_secrets_in_url_query_strings() -> None:
    env = {"SCHEMA_REGISTRY_URL": "https://registry:8081/?access_token=tok123&tenant=lab"}
    settings = load_settings(SourceSettings, {"SCHEMA_REGISTRY_URL": env["SCHEMA_REGISTRY_URL"]})
    shown = settings.redacted()
    assert shown["SCHEMA_REGISTRY_URL"] == "https://registry:8081/?access_token=********&tenant=lab"
    printed = _cli("run", "sink-billing", "--print-config",
                   env={"BILLING_DATABASE_URL": "postgresql://billing:pw789@db/billing?sslpassword=sp000",
                        "SCHEMA_REGISTRY_URL": env["SCHEMA_REGISTRY_URL"]})
    assert printed.returncode == 0, printed.stderr
    for secret in ("tok123", "pw789", "sp000"):
        assert secret not in printed.stdout
    assert "postgresql://********@db/billing?sslpassword=********" in printed.stdout


def test_control_api_settings_bind_to_loopback_and_hide_the_admin_token(tmp_path: Path) -> None:
    settings = load_settings(SourceSettings, {})
    assert settings.status_bind == "127.0.0.1" and settings.admin_token is None
    token = tmp_path / "admin-token"
    token.write_text("0123456789abcdef0123\n")
    settings = load_settings(SourceSettings, {"ADMIN_TOKEN_FILE": str(token), "STATUS_BIND": "0.0.0.0"})
    assert settings.admin_token == "0123456789abcdef0123" and settings.status_bind == "0.0.0.0"
    assert settings.redacted()["ADMIN_TOKEN"] == "********"
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, {"ADMIN_TOKEN": "short"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["ADMIN_TOKEN"]


@pytest.mark.parametrize("cls", [SourceSettings, SinkSettings])
def test_an_empty_runtime_setting_is_a_config_error_naming_it(cls: type[WorkerSettings]) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "", "STATUS_TOPIC": " ", "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": "",
           "STATUS_BIND": "", "TOPICS": " , ", "OFFSET_STORAGE_TOPIC": ""}
    with pytest.raises(ConfigError) as caught:
        load_settings(cls, env)
    named = sorted(p.split(":")[0] for p in caught.value.problems)
    expected = ["ERRORS_DEADLETTERQUEUE_TOPIC_NAME", "KAFKA_BOOTSTRAP_SERVERS", "STATUS_BIND", "STATUS_TOPIC"]
    expected += ["OFFSET_STORAGE_TOPIC"] if cls is SourceSettings else ["TOPICS"]
    assert named == sorted(expected)
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS: must not be empty"):
        client_properties(None, {"KAFKA_BOOTSTRAP_SERVERS": ""})
    with pytest.raises(ConfigError, match="--bootstrap: must not be empty"):
        client_properties(" ", {})


def test_an_empty_file_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, {"ADMIN_TOKEN_FILE": str(empty), "STATUS_TOPIC_FILE": "",
                                       "KAFKA_SASL_PASSWORD_FILE": str(empty)})
    problems = sorted(caught.value.problems)
    assert [p.split(":")[0] for p in problems] == ["ADMIN_TOKEN_FILE", "KAFKA_SASL_PASSWORD_FILE", "STATUS_TOPIC_FILE"]
    assert f"the file {empty} is empty" in problems[0]
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD_FILE: the file .* is empty"):
        client_properties("b:9092", {"KAFKA_SASL_PASSWORD_FILE": str(empty)})


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


def test_cli_print_config_with_bad_log_level_and_missing_secret_file_exits_2() -> None:
    result = _cli("run", "sink-billing", "--print-config",
                  env={"LOG_LEVEL": "verbose", "KAFKA_SASL_PASSWORD_FILE": "/missing/secret"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LOG_LEVEL" in lines[0] and "KAFKA_SASL_PASSWORD_FILE" in lines[0]


def test_schema_registry_client_properties_pass_through_with_secret_files(tmp_path: Path) -> None:
    user_info = tmp_path / "user-info"
    user_info.write_text("lab:s3cret-registry-pw\n")
    import certifi

    env = {"SCHEMA_REGISTRY_URL": "https://registry:8081", "SCHEMA_REGISTRY_SSL_CA_LOCATION": certifi.where(),
           "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(user_info)}
    settings = load_settings(SourceSettings, env)
    assert settings.schema_registry_properties(env) == {"ssl.ca.location": certifi.where(),
                                                        "basic.auth.user.info": "lab:s3cret-registry-pw"}


def test_a_schema_registry_property_the_client_does_not_know_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SourceSettings, {"SCHEMA_REGISTRY_URL": "https://registry:8081",
                                       "SCHEMA_REGISTRY_BASIC_AUTH_USER_INF0": "lab:s3cret-registry-pw"})
    assert "SCHEMA_REGISTRY_BASIC_AUTH_USER_INF0" in str(caught.value)
    assert "s3cret-registry-pw" not in str(caught.value)


def test_print_config_hides_the_schema_registry_user_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "lab:s3cret-registry-pw")
    shown = load_settings(SourceSettings, {}).redacted()
    assert shown["schema-registry:basic.auth.user.info"] == REDACTED


def test_a_sink_task_joins_its_group_as_a_static_member_named_after_connector_and_task() -> None:
    settings = load_settings(SinkSettings, {"TOPICS": "lab-reports", "TASK_ID": "2"})
    assert settings.group_membership("sink-billing") == {"group.id": "connect-sink-billing",
                                                          "group.instance.id": "connect-sink-billing-2"}
    dynamic = load_settings(SinkSettings, {"TOPICS": "lab-reports", "CONSUMER_STATIC_MEMBERSHIP": "false"})
    assert dynamic.group_membership("sink-billing") == {"group.id": "connect-sink-billing"}


def test_the_heartbeat_interval_is_a_setting_with_a_floor() -> None:
    assert load_settings(SinkSettings, {"TOPICS": "t"}).status_heartbeat_interval_ms == 10_000
    with pytest.raises(ConfigError, match="STATUS_HEARTBEAT_INTERVAL_MS"):
        load_settings(SinkSettings, {"TOPICS": "t", "STATUS_HEARTBEAT_INTERVAL_MS": "0"})

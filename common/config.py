"""Configuration from environment variables: one typed settings object per connector.

Field ``foo_bar`` is read from ``FOO_BAR``; ``FOO_BAR_FILE=/run/secrets/x`` reads the
value from a file instead (Docker/Kubernetes secrets). Kafka client properties pass
through by prefix, the Confluent image's convention: ``KAFKA_SASL_MECHANISM`` becomes
``sasl.mechanism``. A bad or missing setting raises :class:`ConfigError` naming every
bad variable; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

def _iana_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_iana_zone)]
"""A setting naming an IANA time zone (``Europe/Berlin``), checked at load time."""

# Settings the runtime owns; any other KAFKA_* variable is a client property.
_KAFKA_OWN = {"KAFKA_BOOTSTRAP_SERVERS"}
_SECRET_WORDS = ("password", "secret", "token", "key", "credentials", "sasl.jaas")


class WorkerSettings(BaseSettings):
    """Settings every connector has (Kafka Connect's names, as environment variables)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=None)

    connector_name: str = Field("", description="Connector name; default: the connector's type name")
    task_id: int = Field(0, ge=0)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = Field(None, description="Confluent-compatible registry; unset = embedded schemas")
    schema_registry_auto_register: bool = True
    errors_tolerance: Literal["none", "all"] = "all"
    errors_retry_timeout_ms: int = Field(300_000, ge=-1, description="-1 retries forever")
    errors_retry_delay_max_ms: int = Field(60_000, ge=1)
    errors_deadletterqueue_topic_name: str = "dead-letter"
    errors_deadletterqueue_context_headers_enable: bool = True
    errors_dlq_max_invalid_ratio: float = Field(0.5, gt=0, le=1)
    errors_dlq_max_consecutive_count: int = Field(1000, ge=1)
    errors_dlq_min_records: int = Field(100, ge=1, description="records seen before the ratio limit applies")
    restart_on_failure: bool = True
    restart_backoff_max_ms: int = Field(300_000, ge=1)
    shutdown_timeout_ms: int = Field(30_000, ge=0)
    status_port: int | None = Field(None, ge=0, le=65535, description="HTTP status/health/metrics port")
    status_topic: str = "connect-status"
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: str = "INFO"

    def kafka_properties(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """librdkafka properties: bootstrap servers plus every other KAFKA_* variable."""
        env = os.environ if environ is None else environ
        props = {"bootstrap.servers": self.kafka_bootstrap_servers}
        for name, value in env.items():
            upper = name.upper()
            if upper.startswith("KAFKA_") and upper not in _KAFKA_OWN and not upper.endswith("_FILE"):
                props[upper[len("KAFKA_"):].lower().replace("_", ".")] = value
            elif upper.startswith("KAFKA_") and upper.endswith("_FILE"):
                prop = upper[len("KAFKA_"):-len("_FILE")].lower().replace("_", ".")
                props[prop] = Path(value).read_text().strip()
        return props

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets replaced, for --print-config."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            out[name.upper()] = _redact(name, value)
        for prop, value in self.kafka_properties().items():
            out[f"kafka:{prop}"] = _redact(prop, value)
        return out


class SinkSettings(WorkerSettings):
    """Settings of sink connectors (consumer side)."""

    topics: str = Field(..., description="Comma-separated topics to consume")
    flush_max_records: int = Field(5000, ge=1)
    flush_max_bytes: int = Field(16 * 1024 * 1024, ge=1)
    flush_max_age_ms: int = Field(5000, ge=1)
    flush_idle_ms: int = Field(1000, ge=1, description="flush a partition that received nothing for this long")
    consume_batch_size: int = Field(1000, ge=1)

    @property
    def topic_list(self) -> list[str]:
        return [t.strip() for t in self.topics.split(",") if t.strip()]


class SourceSettings(WorkerSettings):
    """Settings of source connectors (transactional producer side)."""

    offset_storage_topic: str = "connect-offsets"
    transaction_timeout_ms: int = Field(60_000, ge=1000)


def _redact(name: str, value: Any) -> Any:
    lowered = name.lower()
    if value is not None and any(word in lowered for word in _SECRET_WORDS):
        return "********"
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://********@{rest.rsplit('@', 1)[1]}"
    return value


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from the environment, or raise ConfigError listing every problem."""
    env = dict(os.environ if environ is None else environ)
    upper_env = {k.upper(): v for k, v in env.items()}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field_name in cls.model_fields:
        var = field_name.upper()
        file_var = f"{var}_FILE"
        if file_var in upper_env:
            try:
                values[field_name] = Path(upper_env[file_var]).read_text().strip()
            except OSError as exc:
                problems.append(f"{file_var}: cannot read file ({exc.strerror})")
        elif var in upper_env:
            values[field_name] = upper_env[var]
    try:
        # Values come only from `values`: the environment was already read above.
        settings = cls.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            message = "is required" if error["type"] == "missing" else error["msg"]
            message = message.removeprefix("Value error, ")
            if error["loc"]:
                problems.append(f"{str(error['loc'][0]).upper()}: {message}")
            else:  # a rule across several settings names them in its message
                problems.append(message)
    if problems:
        raise ConfigError(problems)
    return settings

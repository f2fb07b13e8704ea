"""Configuration from environment variables: one typed settings object per connector.

Field ``foo_bar`` is read from ``FOO_BAR``; ``FOO_BAR_FILE=/run/secrets/x`` reads the
value from a file instead (Docker/Kubernetes secrets). Kafka client properties pass
through by prefix, the Confluent image's convention: ``KAFKA_SASL_MECHANISM`` becomes
``sasl.mechanism``; one librdkafka does not know is a bad setting. The schema registry
client's properties pass through the same way: ``SCHEMA_REGISTRY_SSL_CA_LOCATION`` becomes
``ssl.ca.location``, ``SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO(_FILE)`` ``basic.auth.user.info``. A bad or missing setting
raises :class:`ConfigError` naming every bad variable; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import REDACTED, ConfigError, redact_url_secrets


def _iana_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_iana_zone)]
"""A setting naming an IANA time zone (``Europe/Berlin``), checked at load time."""

def not_blank(value: str) -> str:
    """For a setting that has no meaning when empty (``FOO=`` in an env file is a mistake)."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}  # names `logging` accepts too


def _level_name(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().upper()
        return _LEVEL_ALIASES.get(value, value)
    return value


LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_level_name)]
"""A logging level name, in any case."""

# Settings the runtime owns; any other KAFKA_* variable is a client property.
_KAFKA_OWN = {"KAFKA_BOOTSTRAP_SERVERS"}
# Settings the runtime owns; any other SCHEMA_REGISTRY_* variable is a registry client property.
_REGISTRY_OWN = {"SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_AUTO_REGISTER"}
_SECRET_WORDS = ("password", "secret", "token", "key", "credentials", "sasl.jaas", "user.info")
_ADMIN_TOKEN_MIN_LENGTH = 16


class WorkerSettings(BaseSettings):
    """Settings every connector has (Kafka Connect's names, as environment variables)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=None)

    connector_name: str = Field("", description="Connector name; default: the connector's type name")
    task_id: int = Field(0, ge=0)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = Field(None, description="Confluent-compatible registry; unset = embedded schemas")
    schema_registry_auto_register: bool = True
    avro_codec: Literal["generated", "fastavro"] = Field(
        "generated", description="generated: schema-specialised Avro codecs; fastavro: fastavro for every value")
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
    status_bind: str = Field("127.0.0.1", description="address the status server listens on (0.0.0.0: every one)")
    admin_token: str | None = Field(None, description="bearer token that pause/resume/stop/restart require (secret)")
    status_topic: str = "connect-status"
    status_heartbeat_interval_ms: int = Field(10_000, ge=100, description="how often a task re-publishes its "
                                              "status; `labconnect status` shows LOST after three missed")
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: LogLevel = "INFO"

    @field_validator("kafka_bootstrap_servers", "errors_deadletterqueue_topic_name", "status_topic", "status_bind")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return not_blank(value)

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: str | None) -> str | None:
        # Presented over plain HTTP by scripts: long enough that guessing it over the network is hopeless.
        if value is not None and len(value) < _ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(f"must be at least {_ADMIN_TOKEN_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`); "
                             "unset, every mutation is refused")
        return value

    def kafka_properties(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """librdkafka properties: bootstrap servers plus every other KAFKA_* variable."""
        props, _, problems = _passthrough_properties(os.environ if environ is None else environ)
        if problems:
            raise ConfigError(problems)
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **props}

    def schema_registry_properties(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The schema registry client's properties (TLS, basic auth...) from SCHEMA_REGISTRY_* variables."""
        props, _, problems = _passthrough_properties(os.environ if environ is None else environ,
                                                     "SCHEMA_REGISTRY_", _REGISTRY_OWN)
        if problems:
            raise ConfigError(problems)
        return props

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets replaced, for --print-config."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            out[name.upper()] = _redact(name, value)
        for prop, value in self.kafka_properties().items():
            out[f"kafka:{prop}"] = _redact(prop, value)
        for prop, value in self.schema_registry_properties().items():
            out[f"schema-registry:{prop}"] = _redact(prop, value)
        return out


class SinkSettings(WorkerSettings):
    """Settings of sink connectors (consumer side)."""

    topics: str = Field(..., description="Comma-separated topics to consume")
    flush_max_records: int = Field(5000, ge=1)
    flush_max_bytes: int = Field(16 * 1024 * 1024, ge=1)
    flush_max_age_ms: int = Field(5000, ge=1)
    flush_idle_ms: int = Field(1000, ge=1, description="flush a partition that received nothing for this long")
    consume_batch_size: int = Field(1000, ge=1)
    consumer_static_membership: bool = Field(True, description="join the group as connect-<name>-<task id> "
                                             "(group.instance.id): a restarted task gets its partitions back at once")

    @field_validator("topics")
    @classmethod
    def _some_topic(cls, value: str) -> str:
        if not [t for t in value.split(",") if t.strip()]:
            raise ValueError("must name at least one topic")
        return value

    @property
    def topic_list(self) -> list[str]:
        return [t.strip() for t in self.topics.split(",") if t.strip()]

    def group_membership(self, connector_name: str) -> dict[str, str]:
        """The consumer group (``connect-<name>``, as Kafka Connect names it) and, with static
        membership, this task's fixed member id: a task restarted within ``session.timeout.ms``
        takes its place back without a rebalance, where a new dynamic member would wait for the
        dead one's session to expire (45 s by default). A second process with the same name and
        task id fences the first, which exits. ``KAFKA_GROUP_INSTANCE_ID`` overrides the id."""
        group = f"connect-{connector_name}"
        if not self.consumer_static_membership:
            return {"group.id": group}
        return {"group.id": group, "group.instance.id": f"{group}-{self.task_id}"}


class SourceSettings(WorkerSettings):
    """Settings of source connectors (transactional producer side)."""

    offset_storage_topic: str = "connect-offsets"
    transaction_timeout_ms: int = Field(60_000, ge=1000)
    tasks_max: int = Field(1, ge=1, le=1000, description="processes sharing this connector; each has its TASK_ID")

    @field_validator("offset_storage_topic")
    @classmethod
    def _offset_topic_not_blank(cls, value: str) -> str:
        return not_blank(value)

    @model_validator(mode="after")
    def _task_in_range(self) -> SourceSettings:
        if self.task_id >= self.tasks_max:
            raise ValueError(f"TASK_ID must be below TASKS_MAX ({self.tasks_max}): tasks are numbered 0 to "
                             f"{self.tasks_max - 1}")
        return self


def client_properties(bootstrap: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Kafka client properties for the operator tools, from the variables the connectors read
    (every KAFKA_* variable); ``bootstrap`` (a --bootstrap flag) overrides KAFKA_BOOTSTRAP_SERVERS.
    Raises ConfigError naming every bad variable."""
    env = os.environ if environ is None else environ
    props, sources, problems = _passthrough_properties(env)
    problems = problems or _client_property_problems(props, sources)
    if problems:
        raise ConfigError(problems)
    source = "--bootstrap"
    if bootstrap is None:
        default = WorkerSettings.model_fields["kafka_bootstrap_servers"].default
        bootstrap, source = {k.upper(): v for k, v in env.items()}.get("KAFKA_BOOTSTRAP_SERVERS", default), \
            "KAFKA_BOOTSTRAP_SERVERS"
    if not bootstrap.strip():
        raise ConfigError([f"{source}: must not be empty"])
    return {"bootstrap.servers": bootstrap, **props}


def _passthrough_properties(env: Mapping[str, str], prefix: str = "KAFKA_", own: set[str] = _KAFKA_OWN,
                            ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The client properties of the ``prefix``* variables (``KAFKA_X_FILE`` read from its file),
    the variable each came from, and the files that cannot be read."""
    props: dict[str, str] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for name, value in env.items():
        var = name.upper()
        own_var = var.removesuffix("_FILE")
        if not own_var.startswith(prefix) or own_var in own:
            continue
        prop = own_var[len(prefix):].lower().replace("_", ".")
        if var != own_var:
            try:
                value = read_secret_file(var, value)
            except ValueError as exc:
                problems.append(str(exc))
                continue
        props[prop] = value
        sources[prop] = var
    return props, sources, problems


def read_secret_file(variable: str, path: str) -> str:
    """The value an ``X_FILE`` variable points to, stripped; ValueError naming the variable when
    the path is empty, the file cannot be read, or holds nothing (an empty secret is a mistake)."""
    if not path.strip():
        raise ValueError(f"{variable}: is empty (a file path is expected)")
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}: cannot read file ({getattr(exc, 'strerror', None) or type(exc).__name__})") \
            from None
    if not value:
        raise ValueError(f"{variable}: the file {path} is empty")
    return value


_CREATE_FAILED = "Failed to create producer: "
_PROBE_LOG = logging.Logger("labconnect.config.probe")  # librdkafka's warnings about the probe
_PROBE_LOG.addHandler(logging.NullHandler())


def _producer_error(config: dict[str, str]) -> str | None:
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**config, "logger": _PROBE_LOG})
    except KafkaException as exc:
        return str(exc.args[0].str())
    return None


def _client_property_problems(props: dict[str, str], sources: dict[str, str]) -> list[str]:
    """librdkafka's verdict on the passthrough properties (a foreign ``KAFKA_PORT=tcp://...`` is
    no property), from throwaway producers without bootstrap servers, which connect nowhere:
    each property alone for its name and value, then all of them together."""
    problems = []
    for prop, value in props.items():
        error = _producer_error({prop: value})
        if error is None or error.startswith(_CREATE_FAILED):  # alone it may lack a companion
            continue
        if error.startswith("No such configuration property"):
            problems.append(f"{sources[prop]}: {prop} is not a Kafka client property")
        else:  # librdkafka's message quotes the value, which may be a secret
            problems.append(f"{sources[prop]}: invalid value for the Kafka client property {prop}")
    if problems or not props:
        return problems
    error = _producer_error(props)
    if error is None:
        return []
    reason = error.removeprefix(_CREATE_FAILED)
    named = [sources[p] for p in props if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", reason)]
    return [f"{', '.join(named or sorted(sources.values()))}: {reason}"]


def _registry_property_problems(env: Mapping[str, str]) -> list[str]:
    """The schema registry client's verdict on its passthrough properties (it connects nowhere
    when made): an unknown name, a user info without a colon, a certificate it cannot load."""
    props, sources, problems = _passthrough_properties(env, "SCHEMA_REGISTRY_", _REGISTRY_OWN)
    if problems or not props:
        return problems
    from confluent_kafka.schema_registry import SchemaRegistryClient

    url = {k.upper(): v for k, v in env.items()}.get("SCHEMA_REGISTRY_URL") or "http://127.0.0.1"
    try:
        SchemaRegistryClient({"url": url, **props})
    except Exception as exc:  # ValueError, TypeError, ssl.SSLError, OSError: all name a property, not a value
        reason = redact_url_secrets(str(exc))
        named = [sources[p] for p in props if p in reason] or sorted(sources.values())
        return [f"{', '.join(named)}: {reason or type(exc).__name__}"]
    return []


def _redact(name: str, value: Any) -> Any:
    lowered = name.lower()
    if value is not None and any(word in lowered for word in _SECRET_WORDS):
        return REDACTED
    if isinstance(value, str):
        return redact_url_secrets(value)
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
                values[field_name] = read_secret_file(file_var, upper_env[file_var])
            except ValueError as exc:
                problems.append(str(exc))
        elif var in upper_env:
            values[field_name] = upper_env[var]
    try:
        # `values` holds what was read above; pydantic-settings still reads os.environ for a
        # setting not in it (the same variables when `environ` is None).
        settings = cls.model_validate(values)
    except ValidationError as exc:
        problems += [_problem(error) for error in exc.errors()]
        failed = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        if failed:
            problems += _rule_problems(cls, values, failed)
    if issubclass(cls, WorkerSettings):
        props, sources, kafka_problems = _passthrough_properties(env)
        problems += kafka_problems or _client_property_problems(props, sources)
        problems += _registry_property_problems(env)
    if problems:
        raise ConfigError(problems)
    return settings


def _problem(error: Any) -> str:
    message = "is required" if error["type"] == "missing" else error["msg"]
    message = message.removeprefix("Value error, ")
    if error["loc"]:
        return f"{str(error['loc'][0]).upper()}: {message}"
    return str(message)  # a rule across several settings names them in its message


def _rule_problems(cls: type[BaseSettings], values: dict[str, Any], failed: set[str]) -> list[str]:
    """The rules across settings (model validators), which pydantic skips once a field fails:
    checked again with the failed settings at their defaults, so that one start names every
    bad variable. A rule naming a failed variable judged its default, not the setting: left out."""
    retry = {name: value for name, value in values.items() if name not in failed}
    # Given explicitly: a setting left out would be read from os.environ again.
    retry.update({name: field.get_default(call_default_factory=True) for name, field in cls.model_fields.items()
                  if name in failed and not field.is_required()})
    try:
        cls.model_validate(retry)
    except ValidationError as exc:
        names_failed = re.compile(r"\b(" + "|".join(re.escape(name.upper()) for name in sorted(failed)) + r")\b")
        return [_problem(error) for error in exc.errors()
                if not error["loc"] and not names_failed.search(_problem(error))]
    return []

"""How failures are classified, and how their messages are kept free of PHI.

    ConnectorError
     ├── RetriableError   transient: network, 5xx, timeouts, broker or DB unavailable
     └── PermanentError   the record itself is bad: bad data, 4xx, constraint violation
          └── ConfigError  a setting is missing or invalid (exit code 2)

Foreign exceptions are classified by :func:`is_retriable`. Messages of our own
errors are written to be safe (identifiers only); messages of foreign exceptions
pass through :func:`scrub` before they reach a log line or a DLQ header. Credentials in
URLs (user info, secret query parameters) are hidden by :func:`redact_url_secrets`
everywhere text leaves the process: logs, status, DLQ headers, ``--print-config``.
"""

from __future__ import annotations

import re
import socket


class ConnectorError(Exception):
    """Base of the project's errors. ``str(error)`` must never contain PHI."""


class RetriableError(ConnectorError):
    """Trying again later may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Trying again will fail the same way: the record goes to the DLQ (or the task fails)."""


class ConfigError(PermanentError):
    """Invalid configuration; ``problems`` names every bad variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration: " + "; ".join(problems))
        self.problems = problems


class TaskFailed(Exception):
    """The task cannot go on: retries exhausted, errors.tolerance=none, DLQ limit, fenced.

    Its message is written by the runtime from safe parts (counts, stage names, identifiers,
    other errors through :func:`safe_message`), so it is shown as written: scrubbing it again
    would turn the counts of "dead-letter limit exceeded: 51 of 100 records invalid" into <n>."""


_RETRIABLE_NAMES = {
    # httpx / httpcore
    "TimeoutException", "ConnectError", "ReadError", "WriteError", "RemoteProtocolError",
    "PoolTimeout", "ReadTimeout", "WriteTimeout", "ConnectTimeout", "NetworkError",
    # SQLAlchemy / DBAPI
    "OperationalError", "InterfaceError", "DisconnectionError",
    # botocore
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
}


def is_retriable(error: BaseException) -> bool:
    """True when the failure is transient (see the module docstring)."""
    if isinstance(error, RetriableError):
        return True
    if isinstance(error, PermanentError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    if type(error).__name__ == "KafkaException" and error.args and hasattr(error.args[0], "retriable"):
        error = error.args[0]  # confluent_kafka.KafkaException wraps the KafkaError
    retriable_attr = getattr(error, "retriable", None)  # confluent_kafka.KafkaError
    if callable(retriable_attr):
        try:
            return bool(retriable_attr())
        except Exception:
            return False
    for cls in type(error).__mro__:
        if cls.__name__ in _RETRIABLE_NAMES:
            return True
    response = getattr(error, "response", None)  # httpx.HTTPStatusError, botocore ClientError
    status = getattr(response, "status_code", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status == 429 or status >= 500
    return False


_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#@]+@")
# name=value in a URL query, a form body or a libpq-style "key=value ..." string
_PARAMETER = re.compile(r"(^|[?&;\s,])([\w.\[\]-]+)=(\"[^\"]*\"|'[^']*'|[^&#\s'\",;]+)")
_SECRET_NAME = re.compile(r"passw|pwd|secret|token|sig|key|credential|auth", re.IGNORECASE)
REDACTED = "********"


def _redact_parameter(match: re.Match[str]) -> str:
    lead, name, _ = match.groups()
    return f"{lead}{name}={REDACTED}" if _SECRET_NAME.search(name) else match.group(0)


def redact_url_secrets(text: str) -> str:
    """Hide the credentials a URL (or a message quoting one) carries: the password of
    ``scheme://user:pw@host`` (the whole user info) and the values of query parameters whose
    name says secret (``password``, ``access_token``, ``token``, ``sig``, ``signature``,
    ``key``, ``secret``, ``X-Amz-Signature``, ``X-Amz-Credential``, ``client_secret``...)."""
    if "@" in text:
        text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    if "=" in text:
        text = _PARAMETER.sub(_redact_parameter, text)
    return text


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_PHONE = re.compile(r"\+?\d[\d ()./-]{6,}\d")
_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(?![\w.])")
_SQL_PARAMS = re.compile(r"\[parameters: .*?\]|\(Background on this error.*?\)", re.S)


def scrub(message: str, limit: int = 500) -> str:
    """Remove what could be PHI from a foreign exception message.

    Quoted literals (which is where drivers echo values), e-mail addresses, phone
    numbers, bare numbers and SQL parameter dumps are replaced by placeholders;
    identifiers and structure stay so the message is still useful.
    """
    text = redact_url_secrets(_SQL_PARAMS.sub("", message))
    text = _EMAIL.sub("<email>", text)
    text = _QUOTED.sub("<value>", text)
    text = _PHONE.sub("<number>", text)
    text = _NUMBER.sub("<n>", text)
    return text.strip()[:limit]


def safe_message(error: BaseException) -> str:
    """The message of an error as it may be logged or put in a DLQ header."""
    if isinstance(error, (ConnectorError, TaskFailed)):  # written to be free of PHI; may still quote a URL
        return redact_url_secrets(str(error))[:500]
    return scrub(str(error))

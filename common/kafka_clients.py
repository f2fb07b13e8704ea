"""What every Kafka client the runtime and the operator tools create shares: where
librdkafka's own log lines go, and one clear error for a cluster nobody can reach.

A connector's clients log through the ``librdkafka`` logger (``logger=`` option), so its
lines come out in the connector's format (JSON with ``LOG_FORMAT=json``), not as raw
``%3|...|FAIL|`` lines on stderr, and a line repeated at every reconnect is written once a
minute with a count. The operator tools' clients log nowhere: a tool reports
a failure itself, in one line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from common.errors import ConfigError, ConnectorError

class RepeatFilter(logging.Filter):
    """Lets the first of a run of identical lines through and counts the rest for ``window_s``.

    librdkafka reports a refused connection at every reconnect attempt: tens of lines a second
    per client while the cluster is down. The next line of the same kind after the window
    says how many were held back."""

    _VARYING = re.compile(r"after \d+ms")  # the only part that differs between two such lines

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}  # line -> (when it last passed, held back since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = self._VARYING.sub("after -ms", message)
        now = time.monotonic()
        with self._lock:
            passed, held = self._seen.get(key, (-self.window_s, 0))
            if now - passed < self.window_s:
                self._seen[key] = (passed, held + 1)
                return False
            if len(self._seen) >= 1000:  # bounded: a flood of distinct lines forgets the oldest counts
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg, record.args = f"{message} ({held} more like this in the last {self.window_s:.0f}s)", ()
        return True


LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
LIBRDKAFKA_LOG.addFilter(RepeatFilter())

TOOL_LOG = logging.Logger("labconnect.tool.librdkafka")  # outside the logging tree: drops everything
TOOL_LOG.addHandler(logging.NullHandler())


def with_log(config: dict[str, Any], logger: logging.Logger = LIBRDKAFKA_LOG) -> dict[str, Any]:
    """``config`` with librdkafka's log lines sent to ``logger`` (served by the client's poll)."""
    return {**config, "logger": logger}


class BrokerUnreachable(ConnectorError):
    """No broker of the cluster answered; the message names the bootstrap servers and why."""


class KafkaAccessRefused(ConfigError):
    """A broker answered and refused this client: SASL credentials it rejects, a broker
    certificate the client does not trust, or a client certificate the broker does not.
    Retrying cannot help, so it is a configuration error (exit 2), naming the settings to check."""


_AFTER_STATE = re.compile(r"\s*\(after \d+ms in state \w+\)")


def _refused(error: Any) -> bool:
    from confluent_kafka import KafkaError

    code = error.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError._SSL):
        return True
    # A broker that rejects the client's certificate ends the handshake with a TLS alert, which
    # librdkafka reports as a transport failure; other TLS transport errors (a broker going away
    # mid-handshake: "unexpected eof") are outages.
    text = error.str()
    return code == KafkaError._TRANSPORT and "SSL routines" in text and "alert" in text


def _refusal(config: dict[str, Any], error: Any) -> KafkaAccessRefused:
    settings = [f"KAFKA_{name.upper().replace('.', '_')}" for name in config
                if name.startswith(("sasl.", "ssl.", "security."))]
    check = f"; check {', '.join(settings)}" if settings else "; check KAFKA_SECURITY_PROTOCOL and its settings"
    reason = _AFTER_STATE.sub("", error.str())  # librdkafka quotes no secret, only the broker and the cause
    return KafkaAccessRefused([f"Kafka at {config.get('bootstrap.servers')} refused this client: {reason}{check}"])


def _probe(config: dict[str, Any], timeout: float) -> tuple[bool, list[Any], Any]:
    """One metadata request: (answered, client errors seen, the last exception). Returns early
    when every bootstrap server refused or did not resolve, or the cluster refused the client."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[Any] = []
    admin = AdminClient({**config, "logger": TOOL_LOG, "error_cb": errors.append})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return True, errors, None
        except KafkaException as exc:
            last = exc.args[0] if exc.args else exc
        admin.poll(0)  # serves error_cb
        if any(error.code() == KafkaError._ALL_BROKERS_DOWN or error.fatal() or _refused(error) for error in errors) \
                or time.monotonic() >= deadline:
            return False, errors, last


def check_access(config: dict[str, Any], timeout: float = 10.0) -> None:
    """Raise :class:`KafkaAccessRefused` when the cluster refuses this client's credentials or
    certificates. A cluster that does not answer at all is an outage, not a refusal: the
    caller's clients keep trying, so this returns."""
    answered, errors, _ = _probe(config, timeout)
    refusals = [error for error in errors if _refused(error)]
    if not answered and refusals:
        raise _refusal(config, refusals[0])


def require_reachable(config: dict[str, Any], timeout: float = 10.0) -> None:
    """Return once a broker answers a metadata request, or raise :class:`BrokerUnreachable`:
    at once when every bootstrap server refused or did not resolve, else after ``timeout``;
    :class:`KafkaAccessRefused` when a broker refused the client's credentials or certificate."""
    from confluent_kafka import KafkaError

    answered, errors, last = _probe(config, timeout)
    if answered:
        return
    refusals = [error for error in errors if _refused(error)]
    if refusals:
        raise _refusal(config, refusals[0])
    fatal = [error for error in errors if error.fatal()]
    causes = fatal or [error for error in errors if error.code() != KafkaError._ALL_BROKERS_DOWN] or [last]
    reason = causes[-1].str() if hasattr(causes[-1], "str") else str(causes[-1])
    raise BrokerUnreachable(f"cannot reach Kafka at {config.get('bootstrap.servers')}: {reason}")

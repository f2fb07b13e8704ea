"""Task state, published where operators look: a compacted status topic and HTTP.

Every state change is written to the ``connect-status`` topic (key
``status-task-<connector>-<task>``, JSON value as Kafka Connect's REST API shows it),
so ``labconnect status`` gives one view of every connector from any machine. The same
value is written again every ``STATUS_HEARTBEAT_INTERVAL_MS`` with a fresh ``heartbeat``
time, so a process that died without a word (SIGKILL, a lost machine) shows as LOST;
a process that exits says so in its last value (``exited``). Each
process also answers HTTP on ``STATUS_PORT`` (:mod:`common.control_api`), where
``/health`` and ``/ready`` are judged from :meth:`StatusReporter.health` and
:meth:`StatusReporter.readiness`.
"""

from __future__ import annotations

import enum
import json
import logging
import socket
import threading
import time
from typing import Any

from common.errors import redact_url_secrets

log = logging.getLogger(__name__)
VERSION = "0.1.0"


class TaskState(str, enum.Enum):
    UNASSIGNED = "UNASSIGNED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    RESTARTING = "RESTARTING"


class Control:
    """What an operator asked for, read by the worker loop (Kafka Connect's target states).

    ``stop_requested``: leave the process (SIGTERM). ``paused``: keep the task, fetch
    nothing. ``halted``: stop the task (flush, commit, close) but keep the process and its
    status endpoint until resumed. ``restart_requested``: stop the task and start a new one.
    """

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.paused = threading.Event()
        self.halted = threading.Event()
        self.restart_requested = threading.Event()
        self._changed = threading.Event()
        self.stop_requested_at: float | None = None  # time.monotonic() of the first stop request

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.stop_requested.set()
        self._changed.set()

    def halt(self) -> None:
        self.halted.set()
        self._changed.set()

    def resume(self) -> None:
        self.paused.clear()
        self.halted.clear()
        self._changed.set()

    def restart(self) -> None:
        self.restart_requested.set()
        self._changed.set()

    def task_should_end(self) -> bool:
        """The running task must flush, commit and return."""
        return self.stop_requested.is_set() or self.halted.is_set() or self.restart_requested.is_set()

    def wait_for_change(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if an operator request arrived meanwhile."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed


class KafkaConnectivity:
    """Whether the task's own Kafka client holds a live broker connection, from librdkafka's
    statistics (every ``INTERVAL_MS``, served by the client's poll/consume)."""

    INTERVAL_MS = 5000

    def __init__(self) -> None:
        self._connected: bool | None = None  # None: no statistics from the current client yet
        self._at = 0.0

    def client_config(self) -> dict[str, Any]:
        """Properties for the client to watch (a new client: forget what the previous one said)."""
        self._connected, self._at = None, 0.0
        return {"statistics.interval.ms": self.INTERVAL_MS, "stats_cb": self._on_stats}

    def _on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {}).values()
        self._connected = any(broker.get("state") == "UP" for broker in brokers)
        self._at = time.monotonic()

    def problem(self) -> str | None:
        """Why the client does not count as connected, or None."""
        if self._connected is None:
            return "no Kafka client statistics yet"
        if time.monotonic() - self._at > 3 * self.INTERVAL_MS / 1000:
            return "Kafka client statistics are stale (the task is not polling its client)"
        if not self._connected:
            return "no live connection to any Kafka broker"
        return None


DEFAULT_HEARTBEAT_INTERVAL_MS = 10_000


class StatusReporter:
    """Holds the task's state and publishes each change, and a heartbeat every
    ``heartbeat_interval_ms`` from its own thread (not from the worker's loop: a task busy in
    a long flush is alive and must not look lost)."""

    def __init__(self, connector: str, task_id: int, kind: str, status_topic: str | None = None,
                 kafka_config: dict[str, str] | None = None,
                 heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS) -> None:
        self.connector = connector
        self.task_id = task_id
        self.kind = kind
        self.worker_id = f"{socket.gethostname()}:{connector}-{task_id}"
        self.state = TaskState.UNASSIGNED
        self.trace: str | None = None
        self.since = time.time()
        self._topic = status_topic
        self.kafka = KafkaConnectivity()
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._producer = None
        self._closed = threading.Event()
        # One value at a time: a heartbeat built from the old state must not land after the new state.
        self._publishing = threading.Lock()
        if status_topic and kafka_config:
            from confluent_kafka import Producer

            from common.kafka_clients import with_log

            self._producer = Producer(with_log({**kafka_config, "linger.ms": 0, "message.timeout.ms": 10_000}))
            # Serves its deliveries and log lines, which otherwise wait in its queue for the next state change.
            threading.Thread(target=self._serve, name="status-producer", daemon=True).start()

    def set(self, state: TaskState, trace: str | None = None) -> None:
        if trace is not None:
            trace = redact_url_secrets(trace)
        if state == self.state and trace == self.trace:
            return
        self.state, self.trace, self.since = state, trace, time.time()
        log.info("task state %s", state.value, extra={"state": state.value})
        self._publish()

    def retrying(self, what: str, error: BaseException, delay: float) -> None:
        """A retriable failure: keep RUNNING but show why, and log it (no PHI)."""
        from common.errors import safe_message

        message = safe_message(error)
        self.set(TaskState.RUNNING, trace=f"retrying {what}: {type(error).__name__}: {message}")
        log.warning("%s failed, retrying in %.2fs: %s", what, delay, message,
                    extra={"error_class": type(error).__name__, "delay_s": round(delay, 3)})

    def task_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.task_id, "state": self.state.value, "worker_id": self.worker_id}
        if self.trace:
            view["trace"] = self.trace
        return view

    def connector_view(self) -> dict[str, Any]:
        task = self.task_view()
        connector_state = TaskState.RUNNING.value if self.state != TaskState.FAILED else TaskState.FAILED.value
        if self.state in (TaskState.PAUSED, TaskState.STOPPED, TaskState.UNASSIGNED):
            connector_state = self.state.value
        return {"name": self.connector, "connector": {"state": connector_state, "worker_id": self.worker_id},
                "tasks": [task], "type": self.kind}

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health`` as Kafka Connect answers it: 200 healthy, 503 starting, 500 unhealthy.
        A STOPPED task is not healthy either (503): it does nothing until resumed."""
        state = self.state
        if state == TaskState.FAILED:
            return 500, {"status": "unhealthy", "state": state.value, "message": self.trace or "task failed"}
        if state in (TaskState.UNASSIGNED, TaskState.RESTARTING):
            return 503, {"status": "starting", "state": state.value}
        if state == TaskState.STOPPED:
            return 503, {"status": "stopped", "state": state.value,
                         "message": "stopped (by an operator or a shutdown); PUT .../resume starts it again"}
        return 200, {"status": "healthy", "state": state.value}

    def readiness(self) -> list[str]:
        """Why the task is not ready (empty: ready): it must be RUNNING, with no retry in
        progress (its last poll, or put/flush and commit, succeeded) and a live Kafka connection."""
        problems = []
        if self.state != TaskState.RUNNING:
            problems.append(f"task is {self.state.value}")
        elif self.trace:
            problems.append(self.trace)
        kafka = self.kafka.problem()
        if kafka:
            problems.append(kafka)
        return problems

    def status_value(self, exited: bool = False) -> dict[str, Any]:
        """The value published to the status topic: the connector view, when the state last
        changed (``updated``), when this was written (``heartbeat``) and how often it is."""
        return {**self.connector_view(), "updated": int(self.since * 1000), "heartbeat": int(time.time() * 1000),
                "heartbeat_interval_ms": self.heartbeat_interval_ms, "exited": exited}

    def _publish(self, exited: bool = False) -> None:
        if self._producer is None or self._topic is None:
            return
        with self._publishing:
            try:
                self._producer.produce(self._topic, key=f"status-task-{self.connector}-{self.task_id}",
                                       value=json.dumps(self.status_value(exited)))
                self._producer.poll(0)
            except Exception as exc:  # status is best effort; the data path must not stop for it
                log.warning("cannot publish status: %s", type(exc).__name__)

    def _serve(self) -> None:
        interval = self.heartbeat_interval_ms / 1000
        next_beat = time.monotonic() + interval
        while not self._closed.is_set() and self._producer is not None:
            self._producer.poll(max(0.0, min(1.0, next_beat - time.monotonic())))
            if time.monotonic() >= next_beat and not self._closed.is_set():
                self._publish()
                next_beat = time.monotonic() + interval

    def close(self, timeout: float = 5.0) -> None:
        """The process is leaving: say so (the view shows the last state, not LOST) and flush
        for up to ``timeout`` seconds."""
        self._closed.set()
        if self._producer is not None:
            self._publish(exited=True)
            self._producer.flush(timeout)

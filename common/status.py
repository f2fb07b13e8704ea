"""Task state, published where operators look: a compacted status topic and HTTP.

Every state change is written to the ``connect-status`` topic (key
``status-task-<connector>-<task>``, JSON value as Kafka Connect's REST API shows it),
so ``labconnect status`` gives one view of every connector from any machine. Each
process also answers HTTP on ``STATUS_PORT``: ``/`` (version), ``/health`` (200
running, 503 starting, 500 failed), ``/connectors/<name>/status``, ``/metrics``
(Prometheus), and ``PUT /connectors/<name>/pause|resume|stop``,
``POST /connectors/<name>/restart``.
"""

from __future__ import annotations

import enum
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class StatusReporter:
    """Holds the task's state and publishes each change."""

    def __init__(self, connector: str, task_id: int, kind: str, status_topic: str | None = None,
                 kafka_config: dict[str, str] | None = None) -> None:
        self.connector = connector
        self.task_id = task_id
        self.kind = kind
        self.worker_id = f"{socket.gethostname()}:{connector}-{task_id}"
        self.state = TaskState.UNASSIGNED
        self.trace: str | None = None
        self.since = time.time()
        self._topic = status_topic
        self._producer = None
        if status_topic and kafka_config:
            from confluent_kafka import Producer

            self._producer = Producer({**kafka_config, "linger.ms": 0, "message.timeout.ms": 10_000})

    def set(self, state: TaskState, trace: str | None = None) -> None:
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

    def _publish(self) -> None:
        if self._producer is None or self._topic is None:
            return
        value = {**self.connector_view(), "updated": int(self.since * 1000)}
        try:
            self._producer.produce(self._topic, key=f"status-task-{self.connector}-{self.task_id}",
                                   value=json.dumps(value))
            self._producer.poll(0)
        except Exception as exc:  # status is best effort; the data path must not stop for it
            log.warning("cannot publish status: %s", type(exc).__name__)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)


def serve_http(port: int, reporter: StatusReporter, control: Control) -> ThreadingHTTPServer:
    """Start the status/health/metrics HTTP server in a daemon thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    base = f"/connectors/{reporter.connector}"

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: Any) -> None:
            self._send(code, json.dumps(value).encode())

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/":
                self._json(200, {"version": VERSION, "connector": reporter.connector})
            elif path == "/health":
                state = reporter.state
                if state == TaskState.FAILED:
                    self._json(500, {"status": "unhealthy", "message": reporter.trace or "task failed"})
                elif state == TaskState.UNASSIGNED:
                    self._json(503, {"status": "starting"})
                else:
                    self._json(200, {"status": "healthy", "state": state.value})
            elif path == "/connectors":
                self._json(200, [reporter.connector])
            elif path == f"{base}/status":
                self._json(200, reporter.connector_view())
            elif path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error_code": 404, "message": "not found"})

        def do_PUT(self) -> None:  # noqa: N802
            actions = {f"{base}/pause": control.paused.set, f"{base}/resume": control.resume,
                       f"{base}/stop": control.halt}
            action = actions.get(self.path.split("?", 1)[0].rstrip("/"))
            if action is None:
                self._json(404, {"error_code": 404, "message": "not found"})
                return
            action()
            self._send(202, b"")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?", 1)[0].rstrip("/") == f"{base}/restart":
                control.restart()
                self._send(202, b"")
            else:
                self._json(404, {"error_code": 404, "message": "not found"})

        def log_message(self, *args: Any) -> None:  # requests are not worth a log line each
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    return server

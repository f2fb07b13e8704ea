"""Lifecycle of one connector task process: signals, status, failure and restart.

SIGTERM/SIGINT: stop fetching, flush, commit, close, exit 0 (the workers do the
flush; a watchdog exits 1 if that takes longer than ``SHUTDOWN_TIMEOUT_MS``, and
nothing uncommitted is lost since it is redelivered). A failed task is restarted
in-process with exponential backoff when ``RESTART_ON_FAILURE`` is true: Kafka
Connect leaves failed tasks for a human to restart; most failures (an outage
longer than the retry timeout) heal by themselves.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from types import FrameType

from common.config import SinkSettings, SourceSettings, WorkerSettings
from common.connector import ConnectorSpec
from common.errors import ConfigError, safe_message
from common.kafka_clients import KafkaAccessRefused, check_access
from common.retry import RetryPolicy
from common.control_api import serve_http
from common.status import Control, StatusReporter, TaskState
from common.task import SinkTask, SourceTask

log = logging.getLogger(__name__)


def _install_signal_handlers(control: Control, shutdown_timeout_s: float) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if control.stop_requested.is_set():
            return
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        control.request_stop()
        # Watchdog: a flush that cannot finish must not keep the process forever.
        timer = threading.Timer(shutdown_timeout_s, lambda: os._exit(1))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _safe_trace(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)[-8:]
    where = "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames)
    return f"{type(error).__name__}: {safe_message(error)} ({where})"


def run_connector(spec: ConnectorSpec, settings: WorkerSettings, connector_name: str | None = None,
                  extra_headers: list[tuple[str, bytes]] | None = None) -> int:
    """Run the connector's task until stopped. Returns the process exit code."""
    name = connector_name or settings.connector_name or spec.name
    control = Control()
    status = StatusReporter(name, settings.task_id, spec.kind, settings.status_topic, settings.kafka_properties(),
                            settings.status_heartbeat_interval_ms)
    if threading.current_thread() is threading.main_thread():
        _install_signal_handlers(control, settings.shutdown_timeout_ms / 1000.0 + 5)
    server = None
    if settings.status_port is not None:
        server = serve_http(settings.status_port, status, control, settings.status_bind, settings.admin_token)
    restarts = RetryPolicy(-1, settings.restart_backoff_max_ms, initial_delay_ms=1000).delays()
    status_flush_s = 5.0
    try:
        try:
            # Credentials or certificates the cluster refuses would otherwise be retried forever.
            check_access(settings.kafka_properties())
        except KafkaAccessRefused as error:
            status_flush_s = 0.0  # the cluster refuses the status producer too: nothing to wait for
            status.set(TaskState.FAILED, trace=str(error))
            log.error("%s", error)
            print(f"labconnect: {error}", file=sys.stderr)
            return 2
        while not control.stop_requested.is_set():
            if control.halted.is_set():  # PUT .../stop: no task until resumed
                status.set(TaskState.STOPPED)
                control.wait_for_change(1.0)
                continue
            control.restart_requested.clear()
            task = spec.task_factory(settings)
            worker = _make_worker(spec, settings, task, status, control, name, extra_headers)
            try:
                worker.run()
                if control.restart_requested.is_set():
                    log.info("restarting the task on request")
                    status.set(TaskState.RESTARTING)
                    continue
                if control.halted.is_set():
                    continue
                return 0  # stopped by a signal, or a bounded task (a replay) is done
            except ConfigError as error:
                # Bad configuration found at start (a missing migration, an unreadable price list):
                # restarting cannot help, so exit 2 like any other configuration problem.
                status.set(TaskState.FAILED, trace=str(error))
                _close_quietly(worker)
                print(f"labconnect: {error}", file=sys.stderr)
                return 2
            except Exception as error:
                trace = _safe_trace(error)
                log.error("task failed: %s", trace, extra={"error_class": type(error).__name__})
                status.set(TaskState.FAILED, trace=trace)
                _close_quietly(worker)
                if not settings.restart_on_failure or _is_fenced(error):
                    return 1
            delay = next(restarts)
            log.info("restarting the task in %.1fs", delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not control.task_should_end():
                control.wait_for_change(deadline - time.monotonic())
            if not control.stop_requested.is_set():
                status.set(TaskState.RESTARTING)
        return 0
    finally:
        status.close(status_flush_s)
        if server is not None:
            server.shutdown()


def _make_worker(spec: ConnectorSpec, settings: WorkerSettings, task: SourceTask | SinkTask, status: StatusReporter,
                 control: Control, name: str, extra_headers: list[tuple[str, bytes]] | None):  # type: ignore[no-untyped-def]
    if spec.kind == "sink":
        from common._sink_worker import SinkWorker

        assert isinstance(settings, SinkSettings) and isinstance(task, SinkTask)
        settings = settings.model_copy(update={"connector_name": name})
        return SinkWorker(spec, settings, task, status, control)
    from common._source_worker import SourceWorker

    assert isinstance(settings, SourceSettings) and isinstance(task, SourceTask)
    return SourceWorker(spec, settings, task, status, control, connector_name=name, extra_headers=extra_headers)


def _close_quietly(worker: object) -> None:
    close = getattr(worker, "close_on_failure", None)
    if close is not None:
        close()


def _is_fenced(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error} {error.__cause__!r}"
    return "fenced" in text.lower()

"""A connector whose Kafka cluster cannot be reached: alive, but not ready, and says why."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from devstack.ports import free_port
from tests.support.kafka_helpers import start_test_connector, wait_for


def _json_or_none(url: str) -> tuple[int, dict] | None:  # type: ignore[type-arg]
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


def test_a_sink_that_cannot_reach_kafka_is_running_but_not_ready(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sink.log"
    process = start_test_connector("recording-sink", {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "TOPICS": "lab-results", "CONNECTOR_NAME": "unreachable",
        "RECORDING_DB": str(tmp_path / "db.sqlite"), "STATUS_PORT": str(port), "LOG_FORMAT": "json"}, log)
    try:
        wait_for(lambda: (_json_or_none(f"http://127.0.0.1:{port}/health") or (0, {}))[0] == 200, 60, "RUNNING")
        wait_for(lambda: "no live connection to any Kafka broker" in
                 str(_json_or_none(f"http://127.0.0.1:{port}/ready")), 20, "/ready naming Kafka")
        code, body = _json_or_none(f"http://127.0.0.1:{port}/ready") or (0, {})
        assert code == 503 and body["state"] == "RUNNING" and body["ready"] is False
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(45)
        finally:
            if process.poll() is None:
                process.kill()

"""A connector whose Kafka cluster cannot be reached: alive, not ready, and saying so in its
own log format (librdkafka's lines too: with LOG_FORMAT=json every line is JSON)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx

from devstack.ports import free_port
from tests.support.kafka_helpers import start_test_connector, wait_for

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused


def _json_or_none(url: str) -> tuple[int, dict] | None:  # type: ignore[type-arg]
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


def _stop(process: subprocess.Popen[bytes]) -> None:  # SIGTERM, as an orchestrator does
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(45)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _json_lines(log: Path) -> list[dict]:  # type: ignore[type-arg]
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    not_json = []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not not_json, f"lines that are not JSON: {not_json[:5]}"
    return parsed


def test_a_sink_that_cannot_reach_kafka_is_running_but_not_ready_and_logs_only_json(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sink.log"
    process = start_test_connector("recording-sink", {
        "KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE, "TOPICS": "lab-results", "CONNECTOR_NAME": "unreachable",
        "RECORDING_DB": str(tmp_path / "db.sqlite"), "STATUS_PORT": str(port), "LOG_FORMAT": "json"}, log)
    try:
        wait_for(lambda: (_json_or_none(f"http://127.0.0.1:{port}/health") or (0, {}))[0] == 200, 60, "RUNNING")
        wait_for(lambda: "no live connection to any Kafka broker" in
                 str(_json_or_none(f"http://127.0.0.1:{port}/ready")), 20, "/ready naming Kafka")
        code, body = _json_or_none(f"http://127.0.0.1:{port}/ready") or (0, {})
        assert code == 503 and body["state"] == "RUNNING" and body["ready"] is False
    finally:
        _stop(process)
    lines = _json_lines(log)
    refused = [line for line in lines if line["logger"] == "librdkafka"]
    assert refused and all(line["connector"] == "unreachable" for line in refused)
    assert any("Connection refused" in line["msg"] for line in refused)
    # One line per client and broker, not one per reconnect attempt (tens a second).
    assert len(refused) <= 10, [line["msg"] for line in refused]


def test_a_source_that_cannot_reach_kafka_logs_only_json(tmp_path: Path) -> None:
    log = tmp_path / "source.log"
    process = start_test_connector("counting-source", {
        "KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE, "CONNECTOR_NAME": "unreachable-source", "COUNTING_TOPIC": "t",
        "LOG_FORMAT": "json", "SHUTDOWN_TIMEOUT_MS": "1000"}, log)
    try:
        time.sleep(5)  # its producer waits for the cluster; the status producer's lines come meanwhile
    finally:
        # SIGKILL: a SIGTERM is handled only once init_transactions gives up (60 s).
        process.kill()
        process.wait(10)
    lines = _json_lines(log)
    assert any(line["logger"] == "librdkafka" for line in lines)

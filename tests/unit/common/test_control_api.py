"""The status and control HTTP API in-process: who may pause, stop or restart a task, and
what /health and /ready say in each state."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from common.control_api import serve_http
from common.status import Control, KafkaConnectivity, StatusReporter, TaskState

TOKEN = "s3cret-admin-token-0123456789"


class Api:
    def __init__(self, admin_token: str | None) -> None:
        self.reporter = StatusReporter("sink-x", 0, "sink")
        self.control = Control()
        self.server = serve_http(0, self.reporter, self.control, "127.0.0.1", admin_token)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base = f"{self.url}/connectors/sink-x"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api(TOKEN)
    yield server
    server.close()


@pytest.fixture
def api_without_token() -> Iterator[Api]:
    server = Api(None)
    yield server
    server.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_mutation_needs_the_admin_token(api: Api) -> None:
    for headers in ({}, _bearer("wrong-token-wrong-token"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.put(f"{api.base}/pause", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not api.control.paused.is_set()
    assert httpx.put(f"{api.base}/pause", headers=_bearer(TOKEN)).status_code == 202
    assert api.control.paused.is_set()
    assert httpx.post(f"{api.base}/restart", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 202
    assert api.control.restart_requested.is_set()
    assert httpx.put(f"{api.base}/stop", headers=_bearer(TOKEN)).status_code == 202
    assert api.control.halted.is_set()
    assert httpx.put(f"{api.base}/resume", headers=_bearer(TOKEN)).status_code == 202
    assert not api.control.halted.is_set() and not api.control.paused.is_set()


def test_without_a_configured_token_every_mutation_is_refused_saying_how_to_enable_it(api_without_token: Api) -> None:
    api = api_without_token
    for method, action in (("PUT", "pause"), ("PUT", "resume"), ("PUT", "stop"), ("POST", "restart")):
        response = httpx.request(method, f"{api.base}/{action}", headers=_bearer(TOKEN))
        assert response.status_code == 403
        assert "ADMIN_TOKEN" in response.json()["message"]
    assert not api.control.paused.is_set() and not api.control.halted.is_set()
    assert not api.control.restart_requested.is_set()


def test_a_browser_page_cannot_drive_the_api(api: Api) -> None:
    # The token does not help a request that comes from a web page.
    response = httpx.post(f"{api.base}/restart", headers={**_bearer(TOKEN), "Origin": "http://evil.example"})
    assert response.status_code == 403 and not api.control.restart_requested.is_set()
    # Never on GET, a preflight is answered without any CORS header, and no answer carries one.
    for method, action in (("GET", "pause"), ("GET", "restart"), ("POST", "pause"), ("PUT", "restart")):
        response = httpx.request(method, f"{api.base}/{action}", headers=_bearer(TOKEN))
        assert response.status_code == 405, (method, action)
    preflight = httpx.options(f"{api.base}/pause", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "PUT"})
    assert preflight.status_code == 405
    for response in (preflight, httpx.get(f"{api.url}/health", headers={"Origin": "http://evil.example"})):
        assert not any(name.lower().startswith("access-control-") for name in response.headers)
    assert not api.control.paused.is_set() and not api.control.restart_requested.is_set()


def test_health_is_not_healthy_for_a_stopped_or_failed_task(api: Api) -> None:
    expected = {TaskState.UNASSIGNED: 503, TaskState.RUNNING: 200, TaskState.PAUSED: 200,
                TaskState.STOPPED: 503, TaskState.RESTARTING: 503, TaskState.FAILED: 500}
    for state, code in expected.items():
        api.reporter.set(state, trace="boom" if state == TaskState.FAILED else None)
        response = httpx.get(f"{api.url}/health")
        assert response.status_code == code, state
        assert (response.json()["status"] == "healthy") == (code == 200)


def _stats(*states: str) -> str:
    return json.dumps({"brokers": {f"b{n}": {"nodeid": n, "state": state} for n, state in enumerate(states)}})


def test_ready_only_when_running_without_retries_and_connected_to_kafka(api: Api) -> None:
    def ready() -> tuple[int, list[str]]:
        response = httpx.get(f"{api.url}/ready")
        return response.status_code, response.json().get("reasons", [])

    api.reporter.set(TaskState.RUNNING)
    api.reporter.kafka.client_config()
    assert ready() == (503, ["no Kafka client statistics yet"])
    api.reporter.kafka._on_stats(_stats("DOWN", "INIT"))
    assert ready() == (503, ["no live connection to any Kafka broker"])
    api.reporter.kafka._on_stats(_stats("DOWN", "UP"))
    assert ready() == (200, [])
    api.reporter.retrying("put/flush", ConnectionError("database gone"), 1.0)
    code, reasons = ready()
    assert code == 503 and reasons[0].startswith("retrying put/flush: ConnectionError")
    api.reporter.set(TaskState.RUNNING)
    for state in (TaskState.PAUSED, TaskState.STOPPED, TaskState.FAILED):
        api.reporter.set(state)
        assert ready() == (503, [f"task is {state.value}"])


def test_stale_kafka_statistics_do_not_count_as_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaConnectivity()
    kafka._on_stats(_stats("UP"))
    assert kafka.problem() is None
    monkeypatch.setattr(KafkaConnectivity, "INTERVAL_MS", 0)
    assert "stale" in (kafka.problem() or "")


def test_the_server_listens_on_loopback_by_default() -> None:
    api = Api(TOKEN)
    try:
        assert api.server.server_address[0] == "127.0.0.1"
    finally:
        api.close()

from __future__ import annotations

import json
from typing import Any

import pytest

from common import status_view
from common.status import StatusReporter, TaskState


def _reported(connector: str, task_id: int, state: TaskState) -> tuple[str, dict[str, Any]]:
    reporter = StatusReporter(connector, task_id, "sink")
    reporter.set(state, trace="boom" if state == TaskState.FAILED else None)
    return f"status-task-{connector}-{task_id}", {**reporter.connector_view(), "updated": 1000 + task_id}


def _statuses(*reports: tuple[str, int, TaskState]) -> dict[str, dict[str, Any]]:
    return dict(_reported(*report) for report in reports)


def test_json_lists_every_task_of_a_connector() -> None:
    statuses = _statuses(("sink-billing", 1, TaskState.FAILED), ("sink-billing", 0, TaskState.RUNNING),
                         ("sink-warehouse", 0, TaskState.RUNNING))
    view = status_view.expand_status(statuses)
    billing = view["sink-billing"]["status"]
    assert [(t["id"], t["state"]) for t in billing["tasks"]] == [(0, "RUNNING"), (1, "FAILED")]
    assert billing["connector"]["state"] == "FAILED"
    assert billing["name"] == "sink-billing" and billing["type"] == "sink"
    assert [t["id"] for t in view["sink-warehouse"]["status"]["tasks"]] == [0]


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_status_exits_1_when_a_task_failed(flags: list[str], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING), ("sink-billing", 1, TaskState.FAILED))
    monkeypatch.setattr(status_view, "read_statuses", lambda bootstrap, topic: statuses)
    assert status_view.main(flags) == 1
    if flags:
        shown = json.loads(capsys.readouterr().out)
        assert [t["state"] for t in shown["sink-billing"]["status"]["tasks"]] == ["RUNNING", "FAILED"]


def test_status_exits_0_when_every_task_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING), ("sink-billing", 1, TaskState.RUNNING))
    monkeypatch.setattr(status_view, "read_statuses", lambda bootstrap, topic: statuses)
    assert status_view.main(["--json"]) == 0


def test_status_reads_with_the_kafka_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("KAFKA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ops")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "secret")
    configs: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def consumer(config: dict[str, Any]) -> None:
        configs.append(config)
        raise Stop

    monkeypatch.setattr(status_view, "Consumer", consumer)
    monkeypatch.setattr(status_view, "require_reachable", lambda config: None)
    with pytest.raises(Stop):
        status_view.read_statuses("flag:9092", "connect-status")
    assert configs[0]["bootstrap.servers"] == "flag:9092"
    assert configs[0]["security.protocol"] == "SASL_SSL" and configs[0]["sasl.username"] == "ops"

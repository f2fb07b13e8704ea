from __future__ import annotations

import json
from typing import Any

import pytest

from common import status_view
from common.status import StatusReporter, TaskState


NOW_MS = 1_800_000_000_000


def _reported(connector: str, task_id: int, state: TaskState, heartbeat_age_ms: int = 0,
              exited: bool = False) -> tuple[str, dict[str, Any]]:
    reporter = StatusReporter(connector, task_id, "sink", heartbeat_interval_ms=1000)
    reporter.set(state, trace="boom" if state == TaskState.FAILED else None)
    value = {**reporter.status_value(exited), "updated": 1000 + task_id, "heartbeat": NOW_MS - heartbeat_age_ms}
    return f"status-task-{connector}-{task_id}", value


@pytest.fixture(autouse=True)
def _frozen_clock_and_no_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_view, "_now_ms", lambda: NOW_MS)
    monkeypatch.setattr(status_view, "sink_lags", lambda bootstrap, statuses: {})


def _statuses(*reports: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
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


def test_a_task_silent_for_more_than_three_heartbeats_is_lost() -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING, 3000), ("sink-billing", 1, TaskState.RUNNING, 3001))
    view = status_view.expand_status(statuses, NOW_MS)["sink-billing"]["status"]
    assert [(t["state"], t.get("reported_state")) for t in view["tasks"]] == [("RUNNING", None), ("LOST", "RUNNING")]
    assert view["connector"]["state"] == "RUNNING", "one task still heartbeats"
    assert not status_view.unhealthy(dict([_reported("sink-billing", 0, TaskState.RUNNING, 3000)]), NOW_MS)
    assert status_view.unhealthy(statuses, NOW_MS)


def test_a_connector_whose_every_task_is_lost_is_lost() -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING, 60_000), ("sink-billing", 1, TaskState.PAUSED, 60_000))
    view = status_view.expand_status(statuses, NOW_MS)["sink-billing"]["status"]
    assert view["connector"]["state"] == "LOST"


def test_an_exited_process_keeps_its_last_state_and_is_not_live() -> None:
    statuses = _statuses(("replay-x", 0, TaskState.STOPPED, 600_000, True), ("replay-y", 0, TaskState.FAILED, 600_000, True))
    view = status_view.expand_status(statuses, NOW_MS)
    assert view["replay-x"]["status"]["tasks"][0]["state"] == "STOPPED"
    assert view["replay-y"]["status"]["tasks"][0]["state"] == "FAILED"
    assert status_view.live_instances("replay-x", statuses=statuses, now_ms=NOW_MS) == []


def test_live_instances_are_the_tasks_of_that_connector_still_heartbeating() -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING, 0), ("sink-billing", 1, TaskState.STOPPED, 2000),
                         ("sink-billing", 2, TaskState.RUNNING, 10_000), ("sink-billing", 3, TaskState.RUNNING, 0, True),
                         ("sink-billing-2", 0, TaskState.RUNNING, 0))
    live = status_view.live_instances("sink-billing", statuses=statuses, now_ms=NOW_MS)
    assert [(t.task_id, t.state) for t in live] == [(0, "RUNNING"), (1, "STOPPED")]


def test_a_value_without_heartbeats_is_judged_by_its_state() -> None:
    running, failed = _reported("old", 0, TaskState.RUNNING), _reported("old", 1, TaskState.FAILED)
    for _, value in (running, failed):
        del value["heartbeat"], value["heartbeat_interval_ms"], value["exited"]
    statuses = dict([running, failed])
    assert [t.task_id for t in status_view.live_instances("old", statuses=statuses, now_ms=NOW_MS)] == [0]
    assert [t["state"] for t in status_view.expand_status(statuses, NOW_MS)["old"]["status"]["tasks"]] == \
        ["RUNNING", "FAILED"]


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_status_exits_1_when_a_task_is_lost(flags: list[str], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING, 0), ("sink-billing", 1, TaskState.RUNNING, 5000))
    monkeypatch.setattr(status_view, "read_statuses", lambda bootstrap, topic: statuses)
    assert status_view.main(flags) == 1
    out = capsys.readouterr().out
    if not flags:
        assert "LOST" in out and "last reported RUNNING" in out


def test_the_table_shows_each_sinks_lag_once_and_na_when_unknown() -> None:
    from common.group_lag import GroupLag

    statuses = _statuses(("sink-billing", 0, TaskState.RUNNING), ("sink-billing", 1, TaskState.RUNNING),
                         ("sink-warehouse", 0, TaskState.RUNNING))
    lags = {"sink-billing": GroupLag("connect-sink-billing", {("lab-reports", 0): 5, ("lab-reports", 1): 7}),
            "sink-warehouse": GroupLag("connect-sink-warehouse", error="timed out")}
    table = status_view.render_table(statuses, lags, NOW_MS).splitlines()
    lag_column = slice(table[0].index("LAG") - 6, table[0].index("LAG") + 3)
    assert [line[lag_column].strip() for line in table[1:4]] == ["12", "", "n/a"]
    assert "lag of sink-warehouse unknown: timed out" in table[-1]
    json_view = status_view.expand_status(statuses, NOW_MS, lags)
    assert json_view["sink-billing"]["status"]["lag"]["total"] == 12
    assert json_view["sink-warehouse"]["status"]["lag"]["error"] == "timed out"


def test_watch_and_json_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        status_view.main(["--json", "--watch"])
    assert exit_.value.code == 2


def test_watch_needs_a_positive_interval() -> None:
    with pytest.raises(SystemExit) as exit_:
        status_view.main(["--watch", "0"])
    assert exit_.value.code == 2

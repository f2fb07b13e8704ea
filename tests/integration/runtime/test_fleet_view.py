"""The fleet view against the real broker and real processes: heartbeats and LOST, a sink's
lag, forgetting a connector that is gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from common.group_lag import group_lag
from common.status_view import expand_status, live_instances, read_statuses, sink_lags
from tests.integration.conftest import RuntimeEnv, count
from tests.support.kafka_helpers import ROOT, produce, wait_for
from tests.support.test_connectors import lab_result

HEARTBEAT_MS = 2000


def _labconnect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _task_state(runtime: RuntimeEnv, name: str) -> str | None:
    """The state `labconnect status` shows (read in this process: a status command per poll is slow)."""
    tasks = expand_status(read_statuses(runtime.bootstrap, runtime.status)).get(name, {}).get("status", {})
    return tasks["tasks"][0]["state"] if tasks else None


def test_a_sigkilled_instance_shows_lost_within_three_heartbeats_then_can_be_forgotten(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    name = f"fleet-{topic}"
    db = runtime.tmp / "db.sqlite"
    process = runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                            FLUSH_IDLE_MS=200, STATUS_HEARTBEAT_INTERVAL_MS=HEARTBEAT_MS)
    produce(runtime.bootstrap, topic, [("p1", lab_result(n)) for n in range(10)])
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 10, 60, "10 records delivered")
    assert [t.task_id for t in live_instances(name, runtime.bootstrap, runtime.status)] == [0]

    refused = _labconnect("status", "--forget", name, "--bootstrap", runtime.bootstrap, "--topic", runtime.status)
    assert refused.returncode == 1 and "still running" in refused.stderr

    process.send_signal(signal.SIGKILL)
    process.wait(10)
    killed = time.monotonic()
    assert _task_state(runtime, name) == "RUNNING", "the last heartbeat is still fresh"
    produce(runtime.bootstrap, topic, [("p1", lab_result(n)) for n in range(10, 17)])
    wait_for(lambda: _task_state(runtime, name) == "LOST", 3 * HEARTBEAT_MS / 1000 + 10, "LOST")
    # LOST once three intervals pass without a heartbeat, and the last one came at most one interval before the kill.
    assert time.monotonic() - killed <= 4 * HEARTBEAT_MS / 1000 + 4  # + one status read
    assert live_instances(name, runtime.bootstrap, runtime.status) == []

    shown = _labconnect("status", "--bootstrap", runtime.bootstrap, "--topic", runtime.status)
    assert shown.returncode == 1, "a LOST task is unhealthy, like a FAILED one"
    line = next(line for line in shown.stdout.splitlines() if line.startswith(name))
    assert " LOST " in line and " 7 " in line, "7 records produced after the kill are the sink's lag"
    statuses = read_statuses(runtime.bootstrap, runtime.status)
    lag = expand_status(statuses, lags=sink_lags(runtime.bootstrap, statuses))[name]["status"]["lag"]
    assert lag["group"] == f"connect-{name}" and lag["total"] == 7

    forgot = _labconnect("status", "--forget", name, "--bootstrap", runtime.bootstrap, "--topic", runtime.status)
    assert forgot.returncode == 0, forgot.stderr
    assert name not in {value["name"] for value in read_statuses(runtime.bootstrap, runtime.status).values()}
    after = _labconnect("status", "--bootstrap", runtime.bootstrap, "--topic", runtime.status)
    assert after.returncode == 0 and name not in after.stdout


def test_a_stopped_process_keeps_its_state_and_is_no_live_instance(runtime: RuntimeEnv,
                                                                   make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    name = f"gone-{topic}"
    process = runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=name,
                            RECORDING_DB=runtime.tmp / "db.sqlite", STATUS_HEARTBEAT_INTERVAL_MS=1000)
    wait_for(lambda: len(live_instances(name, runtime.bootstrap, runtime.status)) == 1, 60, "a live instance")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert live_instances(name, runtime.bootstrap, runtime.status) == []
    time.sleep(4)  # four heartbeat intervals
    assert _task_state(runtime, name) == "STOPPED", "an orderly exit is not LOST"


def test_group_lag_counts_from_the_committed_offset_or_the_start(runtime: RuntimeEnv,
                                                                 make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=2)
    produce(runtime.bootstrap, topic, [(None, lab_result(n)) for n in range(20)])
    group = f"connect-lag-{topic}"
    ends = _ends(runtime.bootstrap, topic)
    at = min(3, ends[0])  # unkeyed records: partition 0 may hold fewer than 3
    consumer = Consumer({"bootstrap.servers": runtime.bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, at)], asynchronous=False)  # partition 1: never committed
    consumer.close()
    client = {"bootstrap.servers": runtime.bootstrap}
    admin = AdminClient(client)
    lag = group_lag(admin, group, client)
    assert lag.error is None
    assert lag.partitions == {(topic, 0): ends[0] - at, (topic, 1): ends[1]}
    assert lag.total == 20 - at
    assert group_lag(admin, f"connect-nothing-{topic}", client).total == 0


def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{topic}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)}
    finally:
        consumer.close()


def test_watch_redraws_the_view_until_ctrl_c(runtime: RuntimeEnv) -> None:
    watch = subprocess.Popen([sys.executable, "-m", "common", "status", "--watch", "0.5", "--bootstrap",
                              runtime.bootstrap, "--topic", runtime.status], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    frames = []
    try:
        assert watch.stdout is not None
        for line in watch.stdout:
            if "every 0.5s, Ctrl-C to stop" in line:
                frames.append(line)
            if len(frames) == 2:
                break
    finally:
        watch.send_signal(signal.SIGINT)
        _, errors = watch.communicate(timeout=30)  # read on: a full pipe must not hold the exit
    assert len(frames) == 2, "a second frame after the interval"
    assert watch.returncode == 0, errors

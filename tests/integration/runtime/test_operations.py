"""Operator tools against the real broker: the status view and the DLQ re-drive."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from confluent_kafka import Producer

from common.dlq import HEADER_PREFIX, DeadLetterQueue
from common.status_view import read_statuses
from tests.integration.conftest import RuntimeEnv, count
from tests.support.kafka_helpers import ROOT, consume_all, produce, wait_for
from tests.support.test_connectors import lab_result


def _labconnect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_status_shows_every_running_connector(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    for task in (0, 1):
        runtime.start("recording-sink", f"sink{task}", TOPICS=topic, CONNECTOR_NAME=f"view-{topic}", TASK_ID=task,
                      RECORDING_DB=runtime.tmp / "db.sqlite")
    runtime.start("counting-source", "source", CONNECTOR_NAME=f"source-{topic}", COUNTING_TOPIC=topic,
                  COUNTING_TOTAL=10)

    def running() -> int:
        statuses = read_statuses(runtime.bootstrap, runtime.status).values()
        return sum(task["state"] == "RUNNING" for value in statuses for task in value["tasks"])

    wait_for(lambda: running() == 3, 90, "three RUNNING tasks in the status topic", interval=1)
    view = _labconnect("status", "--bootstrap", runtime.bootstrap, "--topic", runtime.status).stdout
    assert view.count(" RUNNING ") == 3
    assert f"view-{topic}" in view and f"source-{topic}" in view


def test_dead_letters_are_shown_and_redriven_once(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    # Original timestamps are kept: the target must not expire old records by time.
    target = make_topic("redriven", config={"retention.ms": "-1"})
    original_ts = int(time.time() * 1000) - 3_600_000
    producer = Producer({"bootstrap.servers": runtime.bootstrap})
    dlq = DeadLetterQueue(producer, runtime.dlq, "sink-billing", 0)
    for n in range(3):
        dlq.send(key=f"k{n}".encode(), value=bytes([0, n, 255]), headers=[("trace", b"t")], timestamp_ms=original_ts,
                 origin_topic="lab-reports", partition=0, offset=n, stage="TASK_PUT", class_name="X",
                 error=ValueError("email jane@example.org rejected"))
    dlq.flush()

    shown = _labconnect("dlq", "show", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq)
    assert shown.returncode == 0 and "lab-reports[0]@2" in shown.stdout
    assert "jane@example.org" not in shown.stdout

    group = f"redrive-{target}"
    for _ in range(2):  # the second run finds nothing new
        result = _labconnect("dlq", "redrive", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq,
                             "--to", target, "--group", group)
        assert result.returncode == 0, result.stderr
    assert "re-drove 0 dead letters" in result.stdout
    redriven = consume_all(runtime.bootstrap, target, expect=3)
    assert [m.value() for m in redriven] == [bytes([0, n, 255]) for n in range(3)]
    headers = dict(redriven[0].headers())
    assert headers["trace"] == b"t" and not any(k.startswith(HEADER_PREFIX) for k in headers)
    assert redriven[0].timestamp()[1] == original_ts


ADMIN_TOKEN = "integration-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_pause_resume_restart_and_stop_over_http(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    import httpx

    from devstack.ports import free_port

    topic = make_topic("results")
    port = free_port()
    name = f"http-{topic}"
    db = runtime.tmp / "db.sqlite"
    process = runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                            STATUS_PORT=port, FLUSH_IDLE_MS=200, ADMIN_TOKEN=ADMIN_TOKEN)
    url = f"http://127.0.0.1:{port}"
    base = f"{url}/connectors/{name}"

    def state() -> str:
        try:
            return str(httpx.get(f"{base}/status", timeout=2).json()["tasks"][0]["state"])
        except httpx.HTTPError:
            return "?"

    def ready() -> int:
        return httpx.get(f"{url}/ready", timeout=2).status_code

    wait_for(lambda: state() == "RUNNING", 60, "RUNNING")
    assert httpx.get(f"{url}/health").status_code == 200
    assert "labconnect_sink_record_read" in httpx.get(f"{url}/metrics").text
    wait_for(lambda: ready() == 200, 20, "ready (RUNNING and connected to the broker)")

    refused = httpx.put(f"{base}/pause")
    assert refused.status_code == 401, "no token, no pause"
    assert httpx.put(f"{base}/pause", headers={"Authorization": "Bearer not-the-admin-token"}).status_code == 401
    time.sleep(0.5)
    assert state() == "RUNNING"

    assert httpx.put(f"{base}/pause", headers=AUTH).status_code == 202
    wait_for(lambda: state() == "PAUSED", 20, "PAUSED")
    assert ready() == 503
    produce(runtime.bootstrap, topic, [("p1", lab_result(1))])
    time.sleep(1.5)
    assert count(db, "SELECT count(*) FROM effects") == 0, "a paused task fetches nothing"
    httpx.put(f"{base}/resume", headers=AUTH)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 1, 20, "delivered after resume")

    assert httpx.post(f"{base}/restart").status_code == 401
    assert httpx.post(f"{base}/restart", headers=AUTH).status_code == 202
    wait_for(lambda: "restarting the task on request" in runtime.log("sink"), 20, "restart")
    wait_for(lambda: state() == "RUNNING", 30, "RUNNING after the restart")

    healthcheck = _dockerfile_healthcheck()
    assert _run_healthcheck(healthcheck, port) == 0
    httpx.put(f"{base}/stop", headers=AUTH)
    wait_for(lambda: state() == "STOPPED", 20, "STOPPED")
    assert httpx.get(f"{url}/health").status_code == 503, "a STOPPED task is not healthy"
    assert ready() == 503
    assert _run_healthcheck(healthcheck, port) == 1
    assert process.poll() is None, "stop keeps the process (and its status) alive"
    produce(runtime.bootstrap, topic, [("p2", lab_result(2))])
    httpx.put(f"{base}/resume", headers=AUTH)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 2, 30, "delivered after resume from STOPPED")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def _dockerfile_healthcheck() -> str:
    """The image's HEALTHCHECK command (shell form, so that it can read STATUS_PORT)."""
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("HEALTHCHECK"))
    command = line.split(" CMD ", 1)[1]
    assert not command.lstrip().startswith("["), "exec form cannot follow STATUS_PORT"
    return command


def _run_healthcheck(command: str, port: int) -> int:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "STATUS_PORT": str(port)}
    return subprocess.run(["/bin/sh", "-c", command], env=env, timeout=30).returncode


def _non_loopback_ipv4() -> str | None:
    """An address of this host other than loopback (the one a default route would use)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("203.0.113.1", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_status_server_is_not_reachable_off_the_host_by_default(runtime: RuntimeEnv,
                                                                     make_topic: Callable[..., str]) -> None:
    import httpx

    from devstack.ports import free_port

    topic = make_topic("results")
    port = free_port()
    runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=f"bind-{topic}",
                  RECORDING_DB=runtime.tmp / "db.sqlite", STATUS_PORT=port)
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/health") is not None, 60, "the status server")
    assert _listening_addresses(port) == {"127.0.0.1"}
    address = _non_loopback_ipv4()
    if address is not None:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}:{port}/health", timeout=3)
    # Without ADMIN_TOKEN, mutations are refused even from the host itself, saying what to set.
    refused = httpx.put(f"http://127.0.0.1:{port}/connectors/bind-{topic}/pause", headers=AUTH)
    assert refused.status_code == 403 and "ADMIN_TOKEN" in refused.json()["message"]


def _get(url: str) -> int | None:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_redrive_per_connector_stops_on_a_missing_topic_and_keeps_each_patient_on_one_partition(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    results = make_topic("results", partitions=6)
    producer = Producer({"bootstrap.servers": runtime.bootstrap})
    dlq = DeadLetterQueue(producer, runtime.dlq, "", 0)
    for n in range(40):
        dlq.connector = "sink-billing" if n % 2 else "sink-warehouse"
        dlq.send(key=f"P{n % 4}".encode(), value=b"v%d" % n, headers=None, timestamp_ms=None,
                 origin_topic=results, partition=0, offset=n, stage="TASK_PUT", class_name="X", error=ValueError("x"))
    dlq.connector = "source-lis"  # a source's raw input: no origin topic, nothing to re-drive into
    dlq.send(key=None, value=b"MSH|...", headers=None, timestamp_ms=None, origin_topic="", partition=0, offset=0,
             stage="TASK_POLL", class_name="X", error=ValueError("x"))
    dlq.flush()
    base = ("dlq", "redrive", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq)

    missing = _labconnect(*base, "--connector", "sink-billing", "--to", f"no-such-{results}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert consume_all(runtime.bootstrap, results, timeout=5, read_committed=False) == []

    billing = _labconnect(*base, "--connector", "sink-billing")
    assert billing.returncode == 0, billing.stderr
    assert "re-drove 20 dead letters" in billing.stdout
    warehouse = _labconnect(*base, "--connector", "sink-warehouse")  # its own progress: not skipped
    assert "re-drove 20 dead letters" in warehouse.stdout, warehouse.stderr
    again = _labconnect(*base, "--connector", "sink-billing")
    assert "re-drove 0 dead letters" in again.stdout

    redriven = consume_all(runtime.bootstrap, results, expect=40)
    assert sorted(m.value() for m in redriven) == sorted(b"v%d" % n for n in range(40))
    partitions_of: dict[bytes, set[int]] = {}
    for message in redriven:
        partitions_of.setdefault(message.key(), set()).add(message.partition())
    assert all(len(p) == 1 for p in partitions_of.values())  # each patient on one partition

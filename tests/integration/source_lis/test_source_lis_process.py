"""source-lis as a real process against the real broker: exactly once for read_committed
readers through a SIGKILL mid-transaction, LIS outages, late-committed updates, HL7 re-sends
after lost ACKs and malformed messages, and a replay that leaves the live cursor alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from common.serde import SingleObjectSerde
from common._source_worker import read_source_offsets
from connectors.source_lis.fhir_client import format_instant
from connectors.source_lis.window import ReplayWindow
from devstack.lis_simulator import (
    FhirSimulator,
    Hl7Faults,
    Hl7Feed,
    MllpSender,
    SimReport,
    expected_hl7_event_ids,
    generate,
)
from devstack.ports import free_port, wait_for_port
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import ROOT, consume_all, wait_for

SERDE = SingleObjectSerde()


@dataclass
class LisTopics:
    results: str
    reports: str
    patients: str

    def env(self) -> dict[str, str]:
        return {"RESULTS_TOPIC": self.results, "REPORTS_TOPIC": self.reports, "PATIENTS_TOPIC": self.patients}


@pytest.fixture
def topics(make_topic: Callable[..., str]) -> LisTopics:
    return LisTopics(results=make_topic("lab-results", partitions=6), reports=make_topic("lab-reports", partitions=6),
                     patients=make_topic("patients", partitions=3, config={"cleanup.policy": "compact"}))


@pytest.fixture
def lis() -> Iterator[FhirSimulator]:
    sim = FhirSimulator(max_count=100)
    sim.start()
    yield sim
    sim.stop()


def _fhir_env(sim: FhirSimulator, topics: LisTopics, **overrides: str | int) -> dict[str, str | int]:
    return {"CONNECTOR_NAME": f"source-lis-{uuid.uuid4().hex[:8]}", "LIS_MODE": "fhir",
            "FHIR_BASE_URL": sim.base_url, "FHIR_PAGE_SIZE": 40, "FHIR_POLL_INTERVAL_MS": 200,
            "FHIR_TIMEOUT_S": 5, "ERRORS_RETRY_DELAY_MAX_MS": 500, **topics.env(), **overrides}


def _event_ids(bootstrap: str, topic: str, *, read_committed: bool = True, expect: int | None = None,
               replay: bool | None = None) -> list[str]:
    """Event ids in ``topic``; ``replay`` True/False keeps only records with/without the replay header."""
    ids = []
    for message in consume_all(bootstrap, topic, timeout=15, read_committed=read_committed, expect=expect):
        if replay is not None and (("replay", b"true") in (message.headers() or [])) != replay:
            continue
        ids.append(SERDE.decode(message.value())[0]["event_id"])
    return ids


def _assert_exactly_once(runtime: RuntimeEnv, topics: LisTopics, expected: set[str], results: int,
                         timeout: float = 40) -> None:
    """Wait until ``results`` LabResults are committed, then: every expected id once, nothing else."""
    wait_for(lambda: len(_event_ids(runtime.bootstrap, topics.results, expect=results)) >= results, timeout,
             f"{results} committed results")
    result_ids = Counter(_event_ids(runtime.bootstrap, topics.results))
    report_ids = Counter(_event_ids(runtime.bootstrap, topics.reports))
    assert sum(result_ids.values()) == results, "each result once: no duplicate, nothing missing"
    assert max(result_ids.values()) == 1 and max(report_ids.values()) == 1
    assert set(result_ids) | set(report_ids) == expected
    assert len(result_ids) + len(report_ids) == len(expected)


def _result_count(versions: list[SimReport]) -> int:
    return sum(len(v.results) for v in versions)


def _status_traces(runtime: RuntimeEnv, connector: str) -> list[str | None]:
    """Every task status the connector published, oldest first (the topic is compacted but young)."""
    key = f"status-task-{connector}-0".encode()
    values = [json.loads(m.value()) for m in consume_all(runtime.bootstrap, runtime.status, timeout=5)
              if m.key() == key]
    return [v["tasks"][0].get("trace") for v in values]


def _stored_cursor(runtime: RuntimeEnv, connector: str) -> dict[str, Any]:
    return read_source_offsets({"bootstrap.servers": runtime.bootstrap}, runtime.offsets, connector)


# -- FHIR --------------------------------------------------------------------------------------------------

def test_sigkill_mid_transaction_then_restart_writes_every_result_exactly_once(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    versions = generate(seed=41, reports=300)
    lis.publish(versions)
    current = list(lis.current.values())
    env = _fhir_env(lis, topics)

    crashing = runtime.start_real("source-lis", "first", CRASH_IN_TRANSACTION=3, **env)
    assert crashing.wait(40) == -signal.SIGKILL, runtime.log("first")[-2000:]
    committed = _event_ids(runtime.bootstrap, topics.results)
    everything = _event_ids(runtime.bootstrap, topics.results, read_committed=False)
    assert committed, "the first two pages were committed"
    assert len(everything) > len(committed), "the third page reached the broker, uncommitted"
    cursor_after_crash = _stored_cursor(runtime, str(env["CONNECTOR_NAME"]))
    assert len(cursor_after_crash) == 1

    runtime.start_real("source-lis", "second", **env)
    _assert_exactly_once(runtime, topics, lis.expected_event_ids(), _result_count(current))
    assert "task state RUNNING" in runtime.log("second")


def test_two_tasks_share_one_connector_and_a_sigkill_of_one_loses_and_repeats_nothing(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    versions = generate(seed=43, reports=300)  # about 3 minutes of lastUpdated: nine 20 s windows
    lis.publish(versions)
    env = _fhir_env(lis, topics, TASKS_MAX=2, FHIR_SLICE_SECONDS=20)

    crashing = runtime.start_real("source-lis", "task0", CRASH_IN_TRANSACTION=3, TASK_ID=0, **env)
    runtime.start_real("source-lis", "task1", TASK_ID=1, **env)
    assert crashing.wait(40) == -signal.SIGKILL, runtime.log("task0")[-2000:]
    runtime.start_real("source-lis", "task0-again", TASK_ID=0, **env)

    _assert_exactly_once(runtime, topics, lis.expected_event_ids(), _result_count(list(lis.current.values())))
    cursors = _stored_cursor(runtime, str(env["CONNECTOR_NAME"]))
    assert sorted(json.loads(key)["slice"] for key in cursors) == [0, 1], "one cursor per task"
    newest = max(v.updated_ms for v in versions)
    assert all(cursor["last_updated"] >= newest - 40_000 for cursor in cursors.values()), "both read to the end"


def test_lis_answering_500_for_a_while_is_retried_and_nothing_is_lost_or_repeated(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    # One version per report: a report re-versioned during a traversal is the next test's subject.
    versions = generate(seed=42, reports=300, preliminary_share=0, correction_share=0)
    first, rest = versions[:150], versions[150:]
    lis.publish(first)
    seen_first = list(lis.current.values())
    expected_first = lis.expected_event_ids()
    env = _fhir_env(lis, topics)
    name = str(env["CONNECTOR_NAME"])
    runtime.start_real("source-lis", "live", **env)
    wait_for(lambda: len(_event_ids(runtime.bootstrap, topics.results)) >= _result_count(seen_first), 40,
             "the first half")

    with lis.faults.lock:  # the server's threads decrement the counter under this lock
        lis.faults.fail_next = 1_000_000  # the LIS is down: every request answers 500
    lis.publish(rest)
    wait_for(lambda: any(t and "500" in t for t in _status_traces(runtime, name)), 20, "the retry in the status")
    requests_during_outage = lis.faults.requests
    wait_for(lambda: lis.faults.requests >= requests_during_outage + 3, 20, "more retries")
    with lis.faults.lock:
        lis.faults.fail_next = 0  # recovered

    # Versions read before the outage stay (a preliminary later made final): both are events.
    seen = {(v.id, v.version): v for v in seen_first + list(lis.current.values())}
    _assert_exactly_once(runtime, topics, expected_first | lis.expected_event_ids(), _result_count(list(seen.values())))
    traces = _status_traces(runtime, name)
    assert any(t and "retrying poll" in t and "FHIR server answered 500" in t for t in traces)
    wait_for(lambda: _status_traces(runtime, name)[-1] is None, 10, "the trace cleared after recovery")
    log = runtime.log("live")
    assert "poll failed, retrying" in log and "FHIR server answered 500" in log


def test_updates_committed_late_with_an_older_last_updated_are_still_read_once(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    versions = generate(seed=43, reports=250)
    lis.publish(versions)
    before = lis.expected_event_ids()
    seen_results = _result_count(list(lis.current.values()))
    runtime.start_real("source-lis", "live", **_fhir_env(lis, topics, FHIR_OVERLAP_SECONDS=120))
    wait_for(lambda: len(_event_ids(runtime.bootstrap, topics.results)) >= seen_results, 40, "the first poll")

    newest = max(v.updated_ms for v in lis.current.values())
    late = [lis.late_update(v.id, lag_ms=60_000) for v in random.Random(43).sample(list(lis.current.values()), 10)]
    assert all(v.updated_ms < newest for v in late), "behind the connector's high-water mark"
    expected = before | lis.expected_event_ids()
    _assert_exactly_once(runtime, topics, expected, seen_results + _result_count(late))


def test_a_report_re_versioned_during_a_traversal_does_not_hide_reports_committed_meanwhile(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    """Servers page over the ids a search matched but serve each resource as it is when the page is
    fetched (as the simulator does). A report finalised while the connector is between pages comes
    back with a lastUpdated far ahead; reports committed in the meantime, with lastUpdated between
    the old high-water mark and that one, are not in the old search and must be found by the next."""
    versions = generate(seed=46, reports=40, preliminary_share=0, correction_share=0, cancel_share=0)
    first, meanwhile = versions[:20], versions[20:]
    lis.publish(first)
    second_page_requested, release = threading.Event(), threading.Event()
    render_page = lis.render_page

    def hold_the_second_page(ids: list[str], token: str, start: int, count: int) -> bytes:
        if start > 0 and not release.is_set():
            second_page_requested.set()
            release.wait(20)
        return render_page(ids, token, start, count)

    lis.render_page = hold_the_second_page  # type: ignore[method-assign]
    runtime.start_real("source-lis", "live", **_fhir_env(lis, topics, FHIR_PAGE_SIZE=10, FHIR_OVERLAP_SECONDS=300))
    assert second_page_requested.wait(30)
    lis.publish(meanwhile)
    lis.publish(replace(first[15], version=2, status="corrected",
                        updated_ms=meanwhile[-1].updated_ms + 600_000))  # on the held page
    release.set()
    # Report 15's first version was on the held page: the current versions are exactly what can be read.
    _assert_exactly_once(runtime, topics, lis.expected_event_ids(), _result_count(list(lis.current.values())),
                         timeout=15)


def _only(versions: list[SimReport]) -> FhirSimulator:
    """A simulator that is never started: the expected event ids of just these versions."""
    sim = FhirSimulator()
    sim.publish(versions)
    return sim


# -- HL7 over MLLP -----------------------------------------------------------------------------------------

def test_hl7_resent_after_lost_acks_is_written_once_and_malformed_messages_are_dead_lettered_and_rejected(
        runtime: RuntimeEnv, topics: LisTopics) -> None:
    port = free_port()
    runtime.start_real("source-lis", "mllp", CONNECTOR_NAME=f"source-lis-{uuid.uuid4().hex[:8]}",
                       LIS_MODE="hl7-mllp", MLLP_PORT=port, HL7_MAX_BATCH=50, **topics.env())
    wait_for_port(port, 30)
    faults = Hl7Faults(duplicate_share=0.1, drop_share=0.15, malformed=6)
    feed = Hl7Feed(generate(seed=44, reports=200), faults=faults, multi_share=0.2)
    messages = feed.messages()
    senders = [MllpSender("127.0.0.1", port, faults=faults, seed=i, timeout_s=20) for i in range(2)]

    def send(index: int) -> None:
        try:
            for control, text in messages[index::2]:
                senders[index].send(control, text)
        finally:
            senders[index].close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    acks = {**senders[0].acks, **senders[1].acks}
    assert len(acks) == len(messages), "every message was answered"
    assert sum(s.sent for s in senders) > len(messages), "some messages were sent again"

    versions = feed.versions
    _assert_exactly_once(runtime, topics, expected_hl7_event_ids(versions), _result_count(versions))
    bad = {c: code for c, code in acks.items() if c.startswith("BAD")}
    # garbage and a non-ORU are rejected (AR); an ORU with an unknown status code is an application error (AE)
    assert sorted(bad.values()) == ["AE", "AE", "AR", "AR", "AR", "AR"]
    assert all(code == "AA" for c, code in acks.items() if not c.startswith("BAD"))
    dead = consume_all(runtime.bootstrap, runtime.dlq, timeout=10)
    assert {m.value() for m in dead} == {text.encode() for c, text in messages if c.startswith("BAD")}
    for message in dead:
        headers = dict(message.headers() or [])
        assert headers.get("__connect.errors.stage") == b"TASK_POLL"
        names = {v.patient.family.encode() for v in versions} | {v.patient.mrn.encode() for v in versions}
        assert not any(n in b"".join(headers.values()) for n in names), "no PHI in the DLQ context headers"


# -- replay ------------------------------------------------------------------------------------------------

def test_replay_of_a_window_repeats_the_live_event_ids_with_the_header_and_leaves_the_live_cursor(
        runtime: RuntimeEnv, topics: LisTopics, lis: FhirSimulator) -> None:
    # A data set starting at a random second: the window's replay connector name (its transactional.id)
    # is this run's own, even with other runs on the same broker.
    lis.publish(generate(seed=45, reports=300, start_ms=1_767_225_600_000 + random.randrange(10**7) * 1000))
    current = sorted(lis.current.values(), key=lambda v: v.updated_ms)
    env = _fhir_env(lis, topics)
    name = str(env["CONNECTOR_NAME"])
    runtime.start_real("source-lis", "live", **env)
    _assert_exactly_once(runtime, topics, lis.expected_event_ids(), _result_count(current))
    live_ids = set(_event_ids(runtime.bootstrap, topics.results)) | set(_event_ids(runtime.bootstrap, topics.reports))
    cursor_before = _stored_cursor(runtime, name)

    # The middle third of the reports.
    since_ms, until_ms = current[len(current) // 3].updated_ms, current[2 * len(current) // 3].updated_ms
    in_window = [v for v in current if since_ms <= v.updated_ms < until_ms]
    window = _only(in_window)
    since, until = format_instant(since_ms), format_instant(until_ms)
    command = [sys.executable, "-m", "common", "replay", "source-lis", "--since", since, "--until", until]
    replay = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **runtime.env(**env)},
                            capture_output=True, timeout=50)
    assert replay.returncode == 0, replay.stderr.decode()[-2000:]

    replayed = Counter(_event_ids(runtime.bootstrap, topics.results, replay=True)
                       + _event_ids(runtime.bootstrap, topics.reports, replay=True))
    assert set(replayed) == window.expected_event_ids() and max(replayed.values()) == 1
    assert set(replayed) <= live_ids, "the same event ids as the live run"
    assert sum(replayed.values()) == len(window.expected_event_ids())
    assert _stored_cursor(runtime, name) == cursor_before, "the live cursor is untouched"
    assert len(_stored_cursor(runtime, ReplayWindow.parse(since, until).connector_name(name))) == 1, \
        "the replay keeps its own cursor"



def test_restarting_the_task_while_senders_are_connected_leaves_no_pending_asyncio_task(
        runtime: RuntimeEnv, topics: LisTopics) -> None:
    """POST .../restart with MLLP senders connected mid-frame: the listener is stopped and
    bound again, and the event loop never reports a task destroyed while pending."""
    import socket

    import httpx

    port, status_port = free_port(), free_port()
    name = f"source-lis-{uuid.uuid4().hex[:8]}"
    token = "restart-test-admin-token-0123456789"
    process = runtime.start_real("source-lis", "restarts", CONNECTOR_NAME=name, LIS_MODE="hl7-mllp",
                                 MLLP_PORT=port, STATUS_PORT=status_port, ADMIN_TOKEN=token, **topics.env())
    base = f"http://127.0.0.1:{status_port}/connectors/{name}"

    def running() -> bool:
        try:
            return httpx.get(f"{base}/status", timeout=2).json()["tasks"][0]["state"] == "RUNNING"
        except httpx.HTTPError:
            return False

    for restart in range(2):
        wait_for(running, 60, f"RUNNING (restart {restart})")
        wait_for_port(port, 30)
        senders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for sock in senders:
            sock.sendall(b"\x0bMSH|^~\\&|half a frame")  # a handler is mid-read when the listener stops
        if restart == 0:
            answer = httpx.post(f"{base}/restart", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            assert answer.status_code == 202
            wait_for(lambda: runtime.log("restarts").count("restarting the task on request") == restart + 1, 30,
                     "the restart")
        for sock in senders:
            sock.close()
    assert runtime.log("restarts").count("restarting the task on request") == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert "destroyed but it is pending" not in runtime.log("restarts")

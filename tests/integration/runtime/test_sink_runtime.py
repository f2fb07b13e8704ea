"""The sink runtime against a real broker, with the connector as a real process."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable

from common.dlq import HEADER_PREFIX
from common.serde import SingleObjectSerde
from tests.integration.conftest import RuntimeEnv, count
from tests.support.kafka_helpers import committed_offsets, consume_all, produce, wait_for
from tests.support.test_connectors import LAB_RESULT, lab_result


def _produce_results(bootstrap: str, topic: str, start: int, stop: int) -> None:
    produce(bootstrap, topic, ((f"p{n % 11}", lab_result(n, f"p{n % 11}")) for n in range(start, stop)))


def test_sink_killed_between_write_and_commit_redelivers_and_ends_exactly_once(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=3)
    _produce_results(runtime.bootstrap, topic, 0, 1000)
    db = runtime.tmp / "sink.db"
    name = f"crash-{topic}"
    crashing = runtime.start("recording-sink", "first", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                             CRASH_AFTER_FLUSHES=1, FLUSH_MAX_RECORDS=400)
    assert crashing.wait(60) == -signal.SIGKILL
    written_before_crash = count(db, "SELECT count(*) FROM deliveries")
    assert written_before_crash > 0
    assert all(offset < 0 for offset in committed_offsets(runtime.bootstrap, f"connect-{name}", topic).values())

    runtime.start("recording-sink", "second", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 1000, 60, "all 1000 records applied")
    wait_for(lambda: sum(committed_offsets(runtime.bootstrap, f"connect-{name}", topic).values()) == 1000, 30,
             "offsets committed to the end")
    # The crashed batch was delivered again (at-least-once) but applied once (exactly-once effect).
    assert count(db, "SELECT count(*) FROM deliveries") >= 1000 + written_before_crash
    assert count(db, "SELECT count(DISTINCT event_id) FROM effects") == 1000


def test_sink_owning_its_offsets_is_exactly_once_across_a_crash(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=3)
    _produce_results(runtime.bootstrap, topic, 0, 900)
    db = runtime.tmp / "tx.db"
    name = f"tx-{topic}"
    crashing = runtime.start("recording-sink", "first", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                             RECORDING_MODE="transactional", CRASH_AFTER_FLUSHES=1, FLUSH_MAX_RECORDS=300)
    assert crashing.wait(60) == -signal.SIGKILL
    runtime.start("recording-sink", "second", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                  RECORDING_MODE="transactional")
    wait_for(lambda: count(db, "SELECT count(*) FROM applied") >= 900, 60, "900 records applied")
    time.sleep(1)
    # Plain inserts: a record applied twice would be a second row.
    assert count(db, "SELECT count(*) FROM applied") == 900
    assert count(db, "SELECT count(DISTINCT event_id) FROM applied") == 900


def test_poison_record_goes_to_the_dlq_with_context_and_original_bytes_while_the_rest_is_delivered(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    serde = SingleObjectSerde()
    poison = lab_result(25)
    poison["result_value"] = "POISON"
    values: list[tuple[str, dict | bytes]] = [(f"p{n}", lab_result(n)) for n in range(50)]  # type: ignore[type-arg]
    values[25] = ("p25", poison)
    values[40] = ("p40", b"\x00not avro at all")
    produce(runtime.bootstrap, topic, values)
    poison_bytes = serde.encode(topic, LAB_RESULT, poison)

    db = runtime.tmp / "sink.db"
    runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=f"dlq-{topic}", RECORDING_DB=db)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 48, 60, "48 good records delivered")
    dead = consume_all(runtime.bootstrap, runtime.dlq, expect=2)
    assert len(dead) == 2
    by_offset = {int(dict(m.headers())[HEADER_PREFIX + "offset"]): m for m in dead}
    put_failure, undecodable = by_offset[25], by_offset[40]

    assert put_failure.value() == poison_bytes and put_failure.key() == b"p25"
    headers = dict(put_failure.headers())
    assert {k for k in headers if k.startswith(HEADER_PREFIX)} == {
        HEADER_PREFIX + n for n in ("topic", "partition", "offset", "connector.name", "task.id", "stage",
                                    "class.name", "exception.class.name", "exception.message",
                                    "exception.stacktrace")}
    assert headers[HEADER_PREFIX + "stage"] == b"TASK_PUT"
    assert headers[HEADER_PREFIX + "topic"] == topic.encode()
    assert undecodable.value() == b"\x00not avro at all"
    assert dict(undecodable.headers())[HEADER_PREFIX + "stage"] == b"VALUE_CONVERTER"
    with sqlite3.connect(db) as conn:
        offsets = {row[0] for row in conn.execute("SELECT offset FROM effects")}
    assert offsets == set(range(50)) - {25, 40}
    wait_for(lambda: committed_offsets(runtime.bootstrap, f"connect-dlq-{topic}", topic) == {0: 50}, 20,
             "offsets committed past the dead letters")


def test_sigterm_during_a_busy_batch_exits_0_with_everything_committed(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=2)
    _produce_results(runtime.bootstrap, topic, 0, 500)
    db = runtime.tmp / "sink.db"
    name = f"term-{topic}"
    process = runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                            FLUSH_DELAY_MS=3000, FLUSH_MAX_RECORDS=100000, FLUSH_IDLE_MS=200)
    wait_for(lambda: "partitions assigned" in runtime.log("sink"), 30, "assignment")
    time.sleep(1.0)  # records consumed; the idle flush is now inside its 3 s write
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert count(db, "SELECT count(*) FROM effects") == 500
    assert sum(committed_offsets(runtime.bootstrap, f"connect-{name}", topic).values()) == 500


def test_idle_partition_is_flushed_within_the_idle_time(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=2)
    db = runtime.tmp / "sink.db"
    name = f"idle-{topic}"
    runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db,
                  FLUSH_IDLE_MS=500, FLUSH_MAX_AGE_MS=600000, FLUSH_MAX_RECORDS=100000)
    wait_for(lambda: "partitions assigned" in runtime.log("sink"), 30, "assignment")
    started = time.monotonic()
    _produce_results(runtime.bootstrap, topic, 0, 10)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 10, 10, "idle flush", interval=0.05)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 1.5, f"idle flush took {elapsed:.2f}s"
    wait_for(lambda: sum(committed_offsets(runtime.bootstrap, f"connect-{name}", topic).values()) == 10, 5,
             "commit after the idle flush")


def test_bad_config_exits_2_naming_every_bad_variable(runtime: RuntimeEnv) -> None:
    process = runtime.start("recording-sink", "bad", FLUSH_IDLE_MS="soon", ERRORS_TOLERANCE="maybe")
    assert process.wait(30) == 2
    line = runtime.log("bad").strip()
    assert len(line.splitlines()) == 1
    for name in ("TOPICS", "FLUSH_IDLE_MS", "ERRORS_TOLERANCE"):
        assert name in line


def test_two_instances_share_partitions_and_one_takes_over_when_the_other_is_killed(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=4)
    db = runtime.tmp / "shared.db"
    name = f"pair-{topic}"
    common_env = dict(TOPICS=topic, CONNECTOR_NAME=name, RECORDING_DB=db, RECORDING_MODE="transactional",
                      FLUSH_MAX_RECORDS=200, FLUSH_IDLE_MS=300)
    first = runtime.start("recording-sink", "a", TASK_ID=0, **common_env)
    wait_for(lambda: "partitions assigned" in runtime.log("a"), 30, "first instance assigned")
    runtime.start("recording-sink", "b", TASK_ID=1, **common_env)

    def assigned_counts(log: str) -> list[int]:
        return [json.loads(line)["count"] for line in log.splitlines()
                if line.startswith("{") and "partitions assigned" in line]

    wait_for(lambda: assigned_counts(runtime.log("b")) and assigned_counts(runtime.log("b"))[-1] == 2, 30,
             "second instance took half of the partitions")
    _produce_results(runtime.bootstrap, topic, 0, 2000)
    wait_for(lambda: count(db, "SELECT count(*) FROM applied") >= 1000, 60, "both instances working")
    first.kill()
    _produce_results(runtime.bootstrap, topic, 2000, 4000)
    wait_for(lambda: count(db, "SELECT count(*) FROM applied") >= 4000, 90, "survivor applied everything")
    time.sleep(1)
    assert count(db, "SELECT count(*) FROM applied") == 4000
    assert count(db, "SELECT count(DISTINCT event_id) FROM applied") == 4000
    assert assigned_counts(runtime.log("b"))[-1] == 4
    survivor_pids = count(db, "SELECT count(DISTINCT pid) FROM deliveries")
    assert survivor_pids == 2


def test_a_failed_task_restarts_itself_with_backoff_and_reports_it(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    poison = lab_result(3)
    poison["result_value"] = "POISON"
    produce(runtime.bootstrap, topic, [("p0", lab_result(0)), ("p3", poison)])
    db = runtime.tmp / "sink.db"
    process = runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=f"restart-{topic}",
                            RECORDING_DB=db, ERRORS_TOLERANCE="none", RESTART_BACKOFF_MAX_MS=1000)
    wait_for(lambda: runtime.log("sink").count("restarting the task") >= 2, 60, "two restarts")
    assert process.poll() is None, "the process keeps restarting its task instead of exiting"
    states = [json.loads(line).get("state") for line in runtime.log("sink").splitlines()
              if line.startswith("{") and "task state" in line]
    assert "FAILED" in states and "RESTARTING" in states
    assert count(db, "SELECT count(*) FROM effects WHERE offset = 1") == 0, "the poison record is never applied"
    assert "POISON" not in runtime.log("sink")


# The session timeout librdkafka defaults to: what a restarted dynamic member would wait for.
DEFAULT_SESSION = dict(KAFKA_SESSION_TIMEOUT_MS="45000", KAFKA_HEARTBEAT_INTERVAL_MS="3000")


def test_a_sigkilled_sink_started_again_resumes_consuming_within_10s_of_its_start(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=3)
    db = runtime.tmp / "sink.db"
    env = dict(TOPICS=topic, CONNECTOR_NAME=f"recover-{topic}", RECORDING_DB=db, FLUSH_IDLE_MS=100, **DEFAULT_SESSION)
    _produce_results(runtime.bootstrap, topic, 0, 30)
    first = runtime.start("recording-sink", "first", **env)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 30, 60, "30 records applied")
    first.kill()
    first.wait(10)
    _produce_results(runtime.bootstrap, topic, 30, 60)
    started = time.monotonic()
    runtime.start("recording-sink", "second", **env)
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == 60, 30, "the records produced while it was down")
    resumed = time.monotonic() - started
    print(f"restarted sink consumed again {resumed:.1f}s after its start")
    assert resumed < 10, f"{resumed:.1f}s: the restarted task waited for the dead member's session to expire"


def test_a_second_process_with_the_same_task_id_takes_over_and_nothing_is_applied_twice(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=3)
    db = runtime.tmp / "sink.db"
    env = dict(TOPICS=topic, CONNECTOR_NAME=f"twin-{topic}", RECORDING_DB=db, RECORDING_MODE="transactional",
               FLUSH_MAX_RECORDS=100, FLUSH_IDLE_MS=100, RESTART_ON_FAILURE="true", **DEFAULT_SESSION)
    first = runtime.start("recording-sink", "first", **env)
    _produce_results(runtime.bootstrap, topic, 0, 2000)
    wait_for(lambda: count(db, "SELECT count(*) FROM applied") >= 300, 60, "the first instance working")
    runtime.start("recording-sink", "second", **env)
    # The broker fences the older member with the same group.instance.id: it must not go on
    # consuming (or restart itself into a fencing loop) beside the newer one.
    assert first.wait(60) == 1
    failed = [json.loads(line) for line in runtime.log("first").splitlines()
              if line.startswith("{") and "task failed" in line]
    assert "Static consumer fenced by other consumer" in failed[0]["msg"]
    _produce_results(runtime.bootstrap, topic, 2000, 3000)
    wait_for(lambda: count(db, "SELECT count(*) FROM applied") >= 3000, 90, "the second instance applied the rest")
    time.sleep(1)
    assert count(db, "SELECT count(*) FROM applied") == 3000
    assert count(db, "SELECT count(DISTINCT event_id) FROM applied") == 3000

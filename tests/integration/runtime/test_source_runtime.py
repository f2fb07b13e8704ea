"""The exactly-once source runtime against a real broker, with the task as a real process."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from common.serde import SingleObjectSerde
from common._source_worker import StopRequested, offset_key, read_source_offsets
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import consume_all, wait_for


def _numbers(bootstrap: str, topic: str, read_committed: bool = True, expect: int | None = None) -> list[int]:
    serde = SingleObjectSerde()
    messages = consume_all(bootstrap, topic, read_committed=read_committed, expect=expect, timeout=10)
    return [int(serde.decode(m.value())[0]["event_id"][1:]) for m in messages]


def test_source_killed_mid_transaction_shows_no_partial_batch_and_resumes_from_its_offset(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("counts", partitions=3)
    name = f"counter-{topic}"
    env = dict(CONNECTOR_NAME=name, COUNTING_TOPIC=topic, COUNTING_TOTAL=1000, COUNTING_BATCH=100)
    crashing = runtime.start("counting-source", "first", CRASH_IN_BATCH=3, **env)
    assert crashing.wait(60) == -signal.SIGKILL

    committed = _numbers(runtime.bootstrap, topic)
    everything = _numbers(runtime.bootstrap, topic, read_committed=False)
    assert sorted(committed) == list(range(200)), "only the two committed batches are visible"
    assert len(everything) > 200, "the third batch reached the broker, uncommitted"
    stored = read_source_offsets({"bootstrap.servers": runtime.bootstrap}, runtime.offsets, name)
    assert stored == {json.dumps({"source": "counter"}, separators=(",", ":")): {"n": 199}}

    runtime.start("counting-source", "second", COUNTING_EXIT_WHEN_DONE="1", **env)
    wait_for(lambda: len(_numbers(runtime.bootstrap, topic, expect=1000)) >= 1000, 60, "all 1000 committed")
    numbers = _numbers(runtime.bootstrap, topic)
    assert sorted(numbers) == list(range(1000)), "every number exactly once for read_committed readers"
    stored = read_source_offsets({"bootstrap.servers": runtime.bootstrap}, runtime.offsets, name)
    assert list(stored.values()) == [{"n": 999}]


def test_offsets_use_kafka_connects_key_and_value_format(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("counts")
    name = f"format-{topic}"
    process = runtime.start("counting-source", "src", CONNECTOR_NAME=name, COUNTING_TOPIC=topic, COUNTING_TOTAL=10,
                            COUNTING_BATCH=10, COUNTING_EXIT_WHEN_DONE="1")
    assert process.wait(60) == 0
    records = consume_all(runtime.bootstrap, runtime.offsets)
    ours = [m for m in records if m.key() == offset_key(name, {"source": "counter"})]
    assert ours and ours[-1].key() == f'["{name}",{{"source":"counter"}}]'.encode()
    assert json.loads(ours[-1].value()) == {"n": 9}


def test_a_zombie_instance_is_fenced(runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("counts")
    name = f"zombie-{topic}"
    zombie = Producer({"bootstrap.servers": runtime.bootstrap, "transactional.id": f"{name}-0"})
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie write")
    zombie.flush(10)
    # A new instance of the task starts: init_transactions fences the zombie.
    process = runtime.start("counting-source", "src", CONNECTOR_NAME=name, COUNTING_TOPIC=topic, COUNTING_TOTAL=5,
                            COUNTING_BATCH=5, COUNTING_EXIT_WHEN_DONE="1")
    assert process.wait(60) == 0
    try:
        zombie.commit_transaction(10)
        fenced = False
    except Exception as error:  # KafkaException: producer fenced
        fenced = "fenced" in str(error).lower() or "epoch" in str(error).lower()
    assert fenced
    values = [m.value() for m in consume_all(runtime.bootstrap, topic)]
    assert b"zombie write" not in values and len(values) == 5


def test_a_batch_of_only_bad_input_still_moves_the_source_offset(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("counts")
    name = f"bad-{topic}"
    env = dict(CONNECTOR_NAME=name, COUNTING_TOPIC=topic, COUNTING_TOTAL=300, COUNTING_BATCH=100, BAD_BATCH=3,
               COUNTING_EXIT_WHEN_DONE="1")
    assert runtime.start("counting-source", "first", **env).wait(60) == 0
    stored = read_source_offsets({"bootstrap.servers": runtime.bootstrap}, runtime.offsets, name)
    assert list(stored.values()) == [{"n": 299}]
    assert runtime.start("counting-source", "second", **env).wait(60) == 0  # resumes past the bad input
    assert len(consume_all(runtime.bootstrap, runtime.dlq)) == 100
    assert sorted(_numbers(runtime.bootstrap, topic)) == list(range(200))


def test_offsets_committed_behind_another_open_transaction_are_read_not_skipped(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    # A replay run killed mid-transaction leaves its transaction open on the shared offsets
    # topic; the live connector's later offsets sit behind it, past the last stable offset.
    offsets = make_topic("offsets", partitions=1, config={"cleanup.policy": "compact"})
    kafka = {"bootstrap.servers": kafka_bootstrap}
    live = Producer({**kafka, "transactional.id": f"live-{offsets}"})
    live.init_transactions()
    live.begin_transaction()
    live.produce(offsets, key=offset_key("live", {"lis": "a"}), value=b'{"n": 1}')
    live.commit_transaction()
    replay = Producer({**kafka, "transactional.id": f"replay-{offsets}", "transaction.timeout.ms": 5000})
    replay.init_transactions()
    replay.begin_transaction()
    replay.produce(offsets, key=offset_key("replay", {"lis": "a"}), value=b'{"n": 7}')
    replay.flush()  # ... and the replay process dies here: its transaction stays open
    live.begin_transaction()
    live.produce(offsets, key=offset_key("live", {"lis": "a"}), value=b'{"n": 2}')
    live.commit_transaction()

    stored = read_source_offsets(kafka, offsets, "live", timeout=60)

    assert stored == {json.dumps({"lis": "a"}, separators=(",", ":")): {"n": 2}}


def test_a_stop_request_ends_the_wait_for_an_open_transaction(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    # SIGTERM while a starting task waits for another transaction on the offsets topic:
    # the task must end now, not after the broker times that transaction out.
    offsets = make_topic("offsets", partitions=1, config={"cleanup.policy": "compact"})
    kafka = {"bootstrap.servers": kafka_bootstrap}
    replay = Producer({**kafka, "transactional.id": f"replay-{offsets}", "transaction.timeout.ms": 60000})
    replay.init_transactions()
    replay.begin_transaction()
    replay.produce(offsets, key=offset_key("replay", {"lis": "a"}), value=b'{"n": 7}')
    replay.flush()
    stop_at = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises(StopRequested):
        read_source_offsets(kafka, offsets, "live", timeout=60, should_stop=lambda: time.monotonic() > stop_at)
    assert time.monotonic() - started < 5
    replay.abort_transaction()


def test_a_missing_output_topic_is_named_in_the_failure(runtime: RuntimeEnv) -> None:
    missing = "no-such-results-topic"
    source = runtime.start("counting-source", "source", CONNECTOR_NAME=f"missing-{time.time_ns()}",
                           COUNTING_TOPIC=missing, COUNTING_TOTAL=10, RESTART_ON_FAILURE="false",
                           KAFKA_TOPIC_METADATA_PROPAGATION_MAX_MS=2000)  # how long an unknown topic may take
    assert source.wait(60) == 1
    failure = [line for line in runtime.log("source").splitlines() if "task failed" in line]
    assert len(failure) == 1
    assert f"10 records failed delivery: 10 to topic {missing}: the topic does not exist" in failure[0]
    assert "<value>" not in failure[0]

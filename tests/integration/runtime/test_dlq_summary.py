"""`labconnect dlq list` and the re-drive's warnings against the real broker and a real sink
process that dead-letters poison records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from confluent_kafka import Producer

from common.dlq import DeadLetterQueue
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import ROOT, consume_all, produce, wait_for
from tests.support.test_connectors import lab_result

JAN_2026_MS = 1_767_225_600_000


def _labconnect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _groups(runtime: RuntimeEnv, *args: str) -> dict[tuple[str, str, str], dict[str, object]]:
    result = _labconnect("dlq", "list", "--json", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq, *args)
    assert result.returncode == 0, result.stderr
    return {(g["connector"], g["stage"], g["error_class"]): g for g in json.loads(result.stdout)}


def test_dlq_list_counts_by_connector_stage_and_error_and_a_redrive_warns_when_records_come_straight_back(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topic = make_topic("results")
    sink = f"rec-{topic}"
    dlq = DeadLetterQueue(Producer({"bootstrap.servers": runtime.bootstrap}), runtime.dlq, "sink-warehouse", 0)
    for n in (0, 5):  # another connector's, with known timestamps
        dlq.send(key=b"k", value=b"\x00", headers=None, timestamp_ms=JAN_2026_MS + n * 60_000, origin_topic=topic,
                 partition=0, offset=n, stage="VALUE_CONVERTER", class_name="X", error=ValueError("not Avro"))
    dlq.flush()
    values = [dict(lab_result(n), result_value="POISON" if n % 2 else str(n)) for n in range(6)]
    produce(runtime.bootstrap, topic, [("p1", value) for value in values])
    runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=sink, RECORDING_DB=runtime.tmp / "db.sqlite",
                  FLUSH_IDLE_MS=200)
    wait_for(lambda: len(consume_all(runtime.bootstrap, runtime.dlq, timeout=2)) >= 5, 60, "3 poison records dead-lettered")

    groups = _groups(runtime)
    poison = groups[(sink, "TASK_PUT", "common.errors.PermanentError")]
    assert (poison["count"], poison["came_back"]) == (3, 0)
    other = groups[("sink-warehouse", "VALUE_CONVERTER", "builtins.ValueError")]
    assert (other["count"], other["oldest"], other["newest"]) == (2, "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")
    assert len(groups) == 2
    text = _labconnect("dlq", "list", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq).stdout
    assert "(5 dead letters in" in text and "ERROR CLASS" in text

    # The sink still fails them: re-driven, they are dead-lettered again at once.
    redrive = ("dlq", "redrive", "--bootstrap", runtime.bootstrap, "--topic", runtime.dlq, "--connector", sink)
    first = _labconnect(*redrive, "--watch", "30")
    assert first.returncode == 0, first.stderr
    assert "re-drove 3 dead letters" in first.stdout
    assert "redrive: 5 dead letters to read" in first.stderr  # progress counts every connector's
    assert "3 of the 3 re-driven records came straight back" in first.stderr
    came_back = _groups(runtime, "--connector", sink)[(sink, "TASK_PUT", "common.errors.PermanentError")]
    assert (came_back["count"], came_back["came_back"]) == (6, 3)

    second = _labconnect(*redrive)  # the ones that came back: re-driven, with a warning
    assert "re-drove 3 dead letters" in second.stdout
    assert "3 of these had been re-driven before and were dead-lettered again" in second.stderr

"""/metrics of real connector processes against the real broker: the event metrics
(published, publish latency, consumed, consumer lag) beside the Connect-style ones."""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.ports import free_port
from tests.integration.conftest import RuntimeEnv, count
from tests.support.kafka_helpers import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _lag(samples: Samples, topic: str, group: str) -> dict[str, float]:
    return {dict(labels)["partition"]: value for (name, labels), value in samples.items()
            if name == "kafka_consumer_lag" and dict(labels).get("topic") == topic
            and dict(labels).get("consumer_group") == group}


def test_source_and_sink_expose_event_metrics_with_sane_values(runtime: RuntimeEnv,
                                                              make_topic: Callable[..., str]) -> None:
    topic = make_topic("results", partitions=2)
    source_port, sink_port = free_port(), free_port()
    source_name, sink_name = f"metrics-source-{topic}", f"metrics-sink-{topic}"
    group = f"connect-{sink_name}"
    total = 300
    source = runtime.start("counting-source", "source", CONNECTOR_NAME=source_name, COUNTING_TOPIC=topic,
                           COUNTING_TOTAL=total, COUNTING_BATCH=100, STATUS_PORT=source_port)

    wait_for(lambda: _value(_scrape(source_port), "kafka_events_published_total", topic=topic) == total, 60,
             f"{total} published records counted")
    samples = _scrape(source_port)
    batches = _value(samples, "kafka_publish_latency_seconds_count", topic=topic)
    assert batches is not None and 3 <= batches <= total / 100, "one latency sample per topic and batch"
    latency_sum = _value(samples, "kafka_publish_latency_seconds_sum", topic=topic)
    assert latency_sum is not None and 0 < latency_sum < 60 * batches
    assert _value(samples, "kafka_events_published_total", topic=runtime.offsets) == batches, \
        "one source offset record per batch, on the offsets topic"
    assert _value(samples, "labconnect_source_record_write_total", connector=source_name, task="0") == total
    assert _value(samples, "labconnect_task_info", connector=source_name, task="0", type="source") == 1
    source.send_signal(signal.SIGTERM)
    assert source.wait(30) == 0

    # A slow sink (each flush of 30 records takes a second; statistics come every 5 s) leaves the records it has not
    # committed yet visible as lag; once it is done, the lag is gone.
    db = runtime.tmp / "db.sqlite"
    runtime.start("recording-sink", "sink", TOPICS=topic, CONNECTOR_NAME=sink_name, RECORDING_DB=db,
                  STATUS_PORT=sink_port, FLUSH_MAX_RECORDS=30, FLUSH_DELAY_MS=1000)
    wait_for(lambda: sum(_lag(_scrape(sink_port), topic, group).values()) > 0, 60, "lag while the sink is behind")
    lag = _lag(_scrape(sink_port), topic, group)
    assert set(lag) <= {"0", "1"} and all(0 <= v <= total for v in lag.values())
    wait_for(lambda: count(db, "SELECT count(*) FROM effects") == total, 60, "every record delivered")
    wait_for(lambda: _lag(_scrape(sink_port), topic, group) == {"0": 0, "1": 0}, 20, "no lag once caught up")
    samples = _scrape(sink_port)
    assert _value(samples, "kafka_events_consumed_total", topic=topic, consumer_group=group) == total
    assert _value(samples, "labconnect_sink_record_read_total", connector=sink_name, task="0") == total
    assert _value(samples, "labconnect_task_info", connector=sink_name, task="0", type="sink") == 1

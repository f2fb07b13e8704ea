"""The sink runtime's own overhead, next to the bare client, on the same topic and run.

    python bench/runtime_overhead.py [--records 300000]

Produces N Avro (single-object) LabResult records to a fresh 3-partition topic on a
real broker ($KAFKA_BOOTSTRAP_SERVERS, or one started here), then consumes the whole
topic in a separate process per mode, so each mode's peak memory is its own:

* ``bare``        confluent-kafka ``consume(1000)`` loop, nothing else
* ``bare+decode`` the same loop plus the serde's decode (generated codec, cached per writer schema)
* ``runtime``     the SinkWorker with a no-op sink: decode, batching, flush, commit

and a decode-only comparison of the stock ``AvroDeserializer`` with the runtime's
registry decoder on the same Confluent wire-format bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import add_json_argument, row, write_rows  # noqa: E402

LAB_RESULT = "com.drdangslab.events.LabResult"


def _record(n: int) -> dict[str, Any]:
    return {"event_id": str(uuid.UUID(int=n)), "event_type": "LAB_RESULT_CREATED", "timestamp": 1_700_000_000_000 + n,
            "version": 1, "patient_id": f"P{n % 5000:06d}", "test_id": "718-7", "test_name": "Hemoglobin",
            "result_value": f"{12 + n % 50 / 10:.1f}", "unit": "g/dL", "reference_range": "12.0-17.5",
            "status": "COMPLETED", "metadata": {}, "accession": f"ACC{n // 20:08d}", "loinc_code": "718-7",
            "abnormal_flag": "N", "result_status": "F", "report_status": "final",
            "source_system": "lis", "source_message_id": f"MSG{n // 20:08d}"}


def produce(bootstrap: str, topic: str, count: int) -> float:
    from confluent_kafka import Producer

    from common.serde import SingleObjectSerde

    serde = SingleObjectSerde()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "compression.type": "lz4"})
    started = time.perf_counter()
    for n in range(count):
        value = serde.encode(topic, LAB_RESULT, _record(n))
        while True:
            try:
                producer.produce(topic, key=f"P{n % 5000:06d}", value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return count / (time.perf_counter() - started)


def _consumer(bootstrap: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "isolation.level": "read_committed"})


def run_mode(mode: str, bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    if mode == "runtime":
        return _run_runtime(bootstrap, topic, count)
    from common.serde import SingleObjectSerde

    decode = SingleObjectSerde().decode if mode == "bare+decode" else None
    consumer = _consumer(bootstrap)
    consumer.subscribe([topic])
    seen = 0
    started = None
    while seen < count:
        messages = consumer.consume(1000, timeout=1.0)
        if messages and started is None:
            started = time.perf_counter()
        for message in messages:
            if decode is not None:
                decode(message.value())
        seen += len(messages)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {"mode": mode, "records": seen, "records_per_s": seen / elapsed}


def _run_runtime(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    from collections.abc import Sequence

    from common.config import SinkSettings, load_settings
    from common.connector import ConnectorSpec
    from common.records import SinkRecord
    from common._sink_worker import SinkWorker
    from common.status import Control, StatusReporter
    from common.task import SinkTask, TopicPartition

    control = Control()
    state = {"seen": 0, "started": None, "flush_ms": []}

    class NoOpSink(SinkTask):
        def put(self, records: Sequence[SinkRecord]) -> None:
            if state["started"] is None:
                state["started"] = time.perf_counter()
            state["seen"] += len(records)

        def flush(self, offsets: dict[TopicPartition, int]) -> None:
            if state["seen"] >= count:
                control.request_stop()

    spec = ConnectorSpec("bench-noop", "sink", SinkSettings, lambda s: NoOpSink())
    settings = load_settings(SinkSettings, {"TOPICS": topic, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                                            "CONNECTOR_NAME": f"bench-{uuid.uuid4().hex[:8]}",
                                            "FLUSH_MAX_RECORDS": "10000", "CONSUME_BATCH_SIZE": "1000",
                                            "AVRO_CODEC": os.environ.get("AVRO_CODEC", "generated")})
    worker = SinkWorker(spec, settings, NoOpSink(), StatusReporter("bench", 0, "sink"), control)
    original = worker._flush_and_commit

    def timed_flush() -> None:
        t = time.perf_counter()
        original()
        state["flush_ms"].append((time.perf_counter() - t) * 1000)

    worker._flush_and_commit = timed_flush  # type: ignore[method-assign]
    worker.run()
    elapsed = time.perf_counter() - state["started"]
    flushes = sorted(state["flush_ms"])
    return {"mode": "runtime", "records": state["seen"], "records_per_s": state["seen"] / elapsed,
            "flush_commit_ms_p50": flushes[len(flushes) // 2], "flush_commit_ms_p99": flushes[int(len(flushes) * .99)]}


def decode_comparison(count: int = 50_000) -> dict[str, float]:
    """Stock AvroDeserializer vs the runtime's fastavro path, same wire-format bytes."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from common.serde import RegistrySerde

    serde = RegistrySerde("mock://bench")
    payloads = [serde.encode("bench", LAB_RESULT, _record(n)) for n in range(count)]
    stock = AvroDeserializer(serde.client)
    context = SerializationContext("bench", MessageField.VALUE)
    t = time.perf_counter()
    for payload in payloads:
        stock(payload, context)
    stock_rate = count / (time.perf_counter() - t)
    t = time.perf_counter()
    for payload in payloads:
        serde.decode(payload)
    ours = count / (time.perf_counter() - t)
    assert SchemaRegistryClient is not None
    return {"stock_avro_deserializer_per_s": stock_rate, "runtime_decoder_per_s": ours, "speedup": ours / stock_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--mode")
    parser.add_argument("--topic")
    parser.add_argument("--bootstrap")
    add_json_argument(parser)
    args = parser.parse_args()
    if args.mode:  # child process: one mode, one JSON line
        result = run_mode(args.mode, args.bootstrap, args.topic, args.records)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from devstack.kafka import start_broker

        broker = start_broker()
        bootstrap = broker.bootstrap_servers
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"bench-runtime-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
        produce_rate = produce(bootstrap, topic, args.records)
        print(f"produced {args.records} records ({produce_rate:,.0f}/s)")
        results = {}
        for mode in ("bare", "bare+decode", "runtime"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--topic", topic, "--bootstrap", bootstrap,
                                  "--records", str(args.records)], capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode]
            extra = (f"  flush+commit p50 {r['flush_commit_ms_p50']:.1f} ms p99 {r['flush_commit_ms_p99']:.1f} ms"
                     if mode == "runtime" else "")
            print(f"{mode:<12} {r['records_per_s']:>10,.0f} records/s  peak {r['peak_rss_mb']:.0f} MB{extra}")
        runtime = results["runtime"]["records_per_s"]
        print(f"runtime / bare+decode = {runtime / results['bare+decode']['records_per_s']:.0%}")
        print(f"runtime / bare        = {runtime / results['bare']['records_per_s']:.0%}")
        decode = decode_comparison()
        print(f"decode only: stock AvroDeserializer {decode['stock_avro_deserializer_per_s']:,.0f}/s, "
              f"runtime decoder {decode['runtime_decoder_per_s']:,.0f}/s ({decode['speedup']:.1f}x)")
        bare, decoded, run = results["bare"], results["bare+decode"], results["runtime"]
        write_rows(args.json, [
            row("bare consume", bare["records_per_s"], peak_rss_mb=bare["peak_rss_mb"]),
            row("bare consume + decode", decoded["records_per_s"], peak_rss_mb=decoded["peak_rss_mb"],
                ceiling="bare consume"),
            row("sink runtime, no-op task", run["records_per_s"], peak_rss_mb=run["peak_rss_mb"],
                ceiling="bare consume + decode", p50_ms=run["flush_commit_ms_p50"],
                p99_ms=run["flush_commit_ms_p99"], latency="flush+commit"),
        ], decode_only=decode)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The billing and warehouse sinks end to end: from the real broker into PostgreSQL / S3.

    python bench/sinks_from_kafka.py billing   [--records 100000]
    python bench/sinks_from_kafka.py warehouse [--records 300000]

Produces N Avro records to a fresh 3-partition topic on a real broker
($KAFKA_BOOTSTRAP_SERVERS, or one started here), then runs each mode in its own
process (so peak memory is the mode's own) over the same topic:

* billing: the sink (runtime + BillingSinkTask) with the ``copy`` and the ``multirow``
  write path into a local PostgreSQL, and a bare one-INSERT-per-row loop of the same rows;
* warehouse: the sink (runtime + WarehouseSinkTask, Parquet zstd) into moto's S3 server;
* both: the bare confluent-kafka consume + decode loop of the same topic (the serde's
  decode, as the runtime calls it);
* warehouse: also the bare consume loop with the bulk (DuckDB) decoder the sink uses, and
  the objects the sink wrote put again with plain boto3 calls (the upload alone).

Reports records/s, MB/s of consumed values, p50/p99 of one flush+commit, peak RSS.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import add_json_argument, row, write_rows  # noqa: E402

CODES = ["2345-7", "718-7", "58410-2", "4548-4", "2093-3", "3016-3"]
JAN_2026 = 1_767_225_600_000


def lab_report(i: int) -> dict[str, Any]:
    return {"event_id": str(uuid.UUID(int=i)), "event_type": "REPORT_FINAL", "timestamp": JAN_2026 + i, "version": 1,
            "patient_id": f"P{i % 5000:06d}", "accession": f"ACC{i:09d}", "test_code": CODES[i % len(CODES)],
            "test_name": "Test", "report_status": "final", "result_count": 3, "critical": False,
            "ordering_provider_id": None, "observed_time": None, "source_system": "lis",
            "source_message_id": f"MSG{i:010d}", "metadata": {}}


def produce(bootstrap: str, topic: str, kind: str, count: int) -> None:
    from confluent_kafka import Producer

    from common.serde import SingleObjectSerde
    from runtime_overhead import _record

    serde = SingleObjectSerde()
    schema = "com.drdangslab.events.LabReport" if kind == "billing" else "com.drdangslab.events.LabResult"
    make = lab_report if kind == "billing" else _record
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4",
                         "partitioner": "murmur2_random"})
    for i in range(count):
        value = make(i)
        while True:
            try:
                producer.produce(topic, key=value["patient_id"], value=serde.encode(topic, schema, value))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def run_sink(spec: Any, env: dict[str, str], count: int) -> dict[str, Any]:
    """The real runtime (SinkWorker) with the connector's task, until ``count`` records are flushed."""
    from common.config import load_settings
    from common._sink_worker import SinkWorker
    from common.status import Control, StatusReporter

    control = Control()
    settings = load_settings(spec.settings, env)
    task = spec.task_factory(settings)
    state: dict[str, Any] = {"seen": 0, "bytes": 0, "started": None, "flush_s": []}
    put, flush = task.put, task.flush

    def counting_put(records: Sequence[Any]) -> None:
        if state["started"] is None:
            state["started"] = time.perf_counter()
        put(records)
        state["pending"] = len(records)
        state["pending_bytes"] = sum(len(r.raw_value or b"") for r in records)

    def timed_flush(offsets: Any) -> None:
        began = time.perf_counter()
        flush(offsets)
        state["flush_s"].append(time.perf_counter() - began)
        state["seen"] += state.pop("pending", 0)
        state["bytes"] += state.pop("pending_bytes", 0)
        if state["seen"] >= count:
            control.request_stop()

    task.put, task.flush = counting_put, timed_flush
    worker = SinkWorker(spec, settings, task, StatusReporter(spec.name, 0, "sink"), control)
    worker.run()
    elapsed = time.perf_counter() - state["started"]
    flushes = sorted(state["flush_s"])
    return {"records": state["seen"], "records_per_s": state["seen"] / elapsed,
            "mb_per_s": state["bytes"] / elapsed / 1e6,
            "flush_ms_p50": flushes[len(flushes) // 2] * 1000, "flush_ms_p99": flushes[int(len(flushes) * .99)] * 1000}


def _bare_loop(bootstrap: str, topic: str, count: int, take: Callable[[bytes], None],
               finish: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The bare confluent-kafka consume loop, handing each value to ``take``."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = size = 0
    started = None
    while seen < count:
        messages = consumer.consume(1000, timeout=1.0)
        if messages and started is None:
            started = time.perf_counter()
        for message in messages:
            value = message.value()
            size += len(value)
            take(value)
        seen += len(messages)
    finish()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {"records": seen, "records_per_s": seen / elapsed, "mb_per_s": size / elapsed / 1e6}


def bare_decode(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    from common.serde import SingleObjectSerde

    return _bare_loop(bootstrap, topic, count, SingleObjectSerde().decode)


def bare_bulk_decode(bootstrap: str, topic: str, count: int, batch: int) -> dict[str, Any]:
    """The bare consume loop with the warehouse's bulk decoder (DuckDB) instead of fastavro."""
    from common.serde import SingleObjectSerde
    from connectors.sink_warehouse.arrow_schema import avro_to_arrow
    from connectors.sink_warehouse.avro_arrow import AvroBatchDecoder

    serde = SingleObjectSerde()
    decoder = AvroBatchDecoder()
    values: list[bytes] = []

    def decode() -> None:
        if values:
            ref = serde.peek(values[0])
            writer = serde.writer_schema(ref)
            decoder.decode(ref, writer, values, 10, avro_to_arrow(writer))
            values.clear()

    def take(value: bytes) -> None:
        values.append(value)
        if len(values) >= batch:
            decode()

    try:
        return _bare_loop(bootstrap, topic, count, take, finish=decode)
    finally:
        decoder.close()


def bare_s3_put(endpoint: str, bucket: str, prefix: str, records: int) -> dict[str, Any]:
    """The upload alone: the objects the sink wrote (read back untimed), put again with plain
    boto3 ``put_object`` calls one after another. Records/s counts the records they hold."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    bodies = [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]
    if not bodies:
        raise SystemExit("bare-s3-put: the sink wrote no object to put again")
    started = time.perf_counter()
    for n, body in enumerate(bodies):
        s3.put_object(Bucket=bucket, Key=f"bare-put/{n}", Body=body)
    elapsed = time.perf_counter() - started
    size = sum(len(body) for body in bodies)
    return {"records": records, "records_per_s": records / elapsed, "mb_per_s": size / elapsed / 1e6,
            "objects": len(bodies)}


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    base = {"TOPICS": args.topic, "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
            "CONNECTOR_NAME": f"bench-{uuid.uuid4().hex[:8]}", "FLUSH_MAX_RECORDS": str(args.batch),
            "FLUSH_IDLE_MS": "2000", "FLUSH_MAX_AGE_MS": "30000"}
    if mode == "bare-decode":
        return bare_decode(args.bootstrap, args.topic, args.records)
    if mode == "bare-bulk-decode":
        return bare_bulk_decode(args.bootstrap, args.topic, args.records, args.batch)
    if mode.startswith("billing-"):
        method = mode.split("-", 1)[1]
        from billing_db import fresh_database

        from connectors.sink_billing.connector import CONNECTOR

        url = fresh_database(args.database, f"bench_{method}_{uuid.uuid4().hex[:6]}")
        return run_sink(CONNECTOR, {**base, "BILLING_DATABASE_URL": url, "BILLING_WRITE_METHOD": method},
                        args.records)
    if mode == "bare-insert":
        from billing_db import fresh_database, lab_reports, run_single_inserts

        url = fresh_database(args.database, f"bench_single_{uuid.uuid4().hex[:6]}")
        count = min(args.records, 20_000)  # one statement per row is slow: a sample is enough
        started = time.perf_counter()
        commits = sorted(run_single_inserts(url, lab_reports(count), args.batch))
        elapsed = time.perf_counter() - started
        return {"records": count, "records_per_s": count / elapsed, "flush_ms_p50": commits[len(commits) // 2] * 1000,
                "flush_ms_p99": commits[int(len(commits) * .99)] * 1000}
    if mode == "bare-s3-put":
        return bare_s3_put(args.s3, args.bucket, "lab/", args.records)
    if mode == "warehouse":
        from connectors.sink_warehouse.connector import CONNECTOR

        return run_sink(CONNECTOR, {**base, "WAREHOUSE_URL": f"s3://{args.bucket}/lab",
                                    "S3_ENDPOINT_URL": args.s3}, args.records)
    raise SystemExit(f"unknown mode {mode}")


# What each mode is compared with in bench/run's table (a bare client of the same run).
CEILINGS = {"billing-copy": "bare-decode", "billing-multirow": "bare-decode", "bare-decode": None,
            "bare-insert": None, "warehouse": "bare-bulk-decode", "bare-bulk-decode": None, "bare-s3-put": None}


def _row(mode: str, r: dict[str, Any], sink: str) -> dict[str, Any]:
    flush = "flush+commit" if "flush_ms_p50" in r and not mode.startswith("bare") else None
    return row(mode, r["records_per_s"], mb_per_s=r.get("mb_per_s"), peak_rss_mb=r.get("peak_rss_mb"),
               ceiling=CEILINGS.get(mode), p50_ms=r.get("flush_ms_p50") if flush else None,
               p99_ms=r.get("flush_ms_p99") if flush else None, latency=flush)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sink", choices=["billing", "warehouse"])
    add_json_argument(parser)
    parser.add_argument("--records", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--mode")
    for hidden in ("--topic", "--bootstrap", "--database", "--bucket", "--s3"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.records = args.records or (100_000 if args.sink == "billing" else 300_000)
    args.batch = args.batch or (5_000 if args.sink == "billing" else 50_000)  # the sinks' own defaults
    if args.mode:
        result = run_mode(args.mode, args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    services: list[Any] = []
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from devstack.kafka import start_broker

        services.append(start_broker())
        bootstrap = services[-1].bootstrap_servers
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"bench-{args.sink}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
        admin.create_topics([NewTopic("dead-letter", 1, 1)])  # may exist already
        started = time.perf_counter()
        produce(bootstrap, topic, args.sink, args.records)
        print(f"produced {args.records} records to {topic} in {time.perf_counter() - started:.1f}s")
        extra: list[str] = ["--topic", topic, "--bootstrap", bootstrap]
        if args.sink == "billing":
            from devstack.postgres import start_postgres

            services.append(start_postgres())
            extra += ["--database", services[-1].url]
            modes = ["bare-decode", "billing-copy", "billing-multirow", "bare-insert"]
        else:
            import boto3

            from devstack.s3 import start_s3

            services.append(start_s3())
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=services[-1].endpoint_url, region_name="us-east-1",
                         aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=bucket)
            extra += ["--bucket", bucket, "--s3", services[-1].endpoint_url]
            modes = ["bare-decode", "bare-bulk-decode", "warehouse", "bare-s3-put"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
        results = {}
        print(f"{'mode':<18} {'records/s':>10} {'MB/s':>7} {'flush p50':>10} {'flush p99':>10} {'peak RSS':>9}")
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, args.sink, "--mode", mode, "--records", str(args.records),
                                  "--batch", str(args.batch), *extra], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{mode}: failed\n{out.stderr[-3000:]}")
                continue
            r = results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            p50 = f"{r['flush_ms_p50']:.0f} ms" if "flush_ms_p50" in r else "-"
            p99 = f"{r['flush_ms_p99']:.0f} ms" if "flush_ms_p99" in r else "-"
            mbs = f"{r['mb_per_s']:.1f}" if "mb_per_s" in r else "-"
            print(f"{mode:<18} {r['records_per_s']:>10,.0f} {mbs:>7} {p50:>10} {p99:>10} {r['peak_rss_mb']:>6.0f} MB")
        for bare in ("bare-decode", "bare-bulk-decode"):
            for mode, r in results.items():
                if bare in results and not mode.startswith("bare"):
                    print(f"{mode} / {bare} = {r['records_per_s'] / results[bare]['records_per_s']:.0%}")
        write_rows(args.json, [_row(mode, r, args.sink) for mode, r in results.items()])
    finally:
        for service in reversed(services):
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: a backfill, `labconnect replay source-lis` of N days of LIS history through the
broker into sink-warehouse (moto S3) and sink-billing (PostgreSQL), next to the bare ceilings.

    PYTHONPATH=. python bench/backfill.py [--days 2] [--results-per-day 25000] [--rounds 3]

The simulator holds N days of history (FHIR, pages pre-rendered). Each round, interleaved:

* ``1 task``     one replay of the whole window -> fresh topics -> one sink-warehouse and one
                 sink-billing process (fresh prefix and database); timed from the replay's start
                 until both sinks have made every record durable;
* ``2 tasks``    the window split in two replays run at once, two processes per sink
                 (TASK_ID 0 and 1 in one consumer group);
* ``fhir bare``  the same search pages fetched with httpx, bodies only: the LIS side's ceiling;
* ``kafka bare`` the records the replay produced, copied in transactions of 1,000 by a bare
                 producer and read back by a read_committed consumer: the broker's ceiling.

Prints medians of the rounds: results/s, the ratio of each pipeline to the slower bare
ceiling, and the hours a year (36.5 M results) takes at that rate.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

YEAR_RESULTS = 36_500_000
DAY_MS = 86_400_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fresh_database(admin_url: str, name: str) -> str:
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _topic_ends(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ends"})
    try:
        ends = {}
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                ends[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return ends
    finally:
        consumer.close()


def _durable(stack: Any, billing_url: str, warehouse_group: str, results: str, reports: str) -> dict[tuple[str, int], int]:
    """Next offset each sink made durable, per (topic, partition) it reads."""
    import sqlalchemy as sa
    from confluent_kafka import Consumer, TopicPartition

    engine = sa.create_engine(billing_url)
    try:
        with engine.connect() as conn:
            out = {(t, p): o for t, p, o in conn.execute(sa.text(
                "SELECT topic, kafka_partition, next_offset FROM billing_kafka_offsets"))}
    except sa.exc.SQLAlchemyError:
        out = {}
    finally:
        engine.dispose()
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": warehouse_group})
    try:
        partitions = consumer.list_topics(results, timeout=10).topics[results].partitions
        for tp in consumer.committed([TopicPartition(results, p) for p in partitions], timeout=10):
            out[(results, tp.partition)] = tp.offset
    finally:
        consumer.close()
    return out


def run_pipeline(stack: Any, tag: str, windows: list[tuple[int, int]], results_expected: int) -> dict[str, Any]:
    """Replays of ``windows`` at once into fresh topics, one sink process per window per sink."""
    import os

    from common.topics import TopicSpec, create_topics

    results, reports, patients = f"{tag}-lab-results", f"{tag}-lab-reports", f"{tag}-patients"
    create_topics(stack.bootstrap, (TopicSpec(results, 6), TopicSpec(reports, 6),
                                    TopicSpec(patients, 6, {"cleanup.policy": "compact"})))
    billing_url = fresh_database(stack.postgres.url, tag.replace("-", "_"))
    topics = {"RESULTS_TOPIC": results, "REPORTS_TOPIC": reports, "PATIENTS_TOPIC": patients}
    sinks = []
    for task in range(len(windows)):
        for name, env in (("sink-billing", {"TOPICS": reports, "BILLING_DATABASE_URL": billing_url}),
                          ("sink-warehouse", {"TOPICS": results, "WAREHOUSE_URL": f"s3://drill-warehouse/{tag}",
                                              "S3_ENDPOINT_URL": stack.s3.endpoint_url})):
            full = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env(name), **env,
                    "CONNECTOR_NAME": f"{tag}-{name}", "TASK_ID": str(task), "FLUSH_MAX_RECORDS": "20000"}
            log = open(stack.work / "logs" / f"{tag}-{name}-{task}.log", "ab")
            sinks.append(subprocess.Popen([sys.executable, "-m", "common", "run", name], cwd=stack.work, env=full,
                                          stdout=log, stderr=subprocess.STDOUT))
    time.sleep(8)  # the sinks start, join their groups and sit idle before the clock starts
    started = time.monotonic()
    replays = []
    for since, until in windows:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env("source-lis-fhir"), **topics,
               "CONNECTOR_NAME": f"{tag}-source", "FHIR_PAGE_SIZE": "1000"}
        log = open(stack.work / "logs" / f"{tag}-replay.log", "ab")
        replays.append(subprocess.Popen([sys.executable, "-m", "common", "replay", "source-lis", "--since", iso(since),
                                         "--until", iso(until)], cwd=stack.work, env=env,
                                        stdout=log, stderr=subprocess.STDOUT))
    # The first record in Kafka ends the replay's start-up (a process, imports, the producer's
    # transactions): a one-off per replay, left out of the steady rate a year is estimated from.
    first_s = None
    while any(r.poll() is None for r in replays):
        if first_s is None and sum(_topic_ends(stack.bootstrap, [results]).values()) > 0:
            first_s = time.monotonic() - started
        if time.monotonic() - started > 1800:
            raise TimeoutError(f"{tag}: the replay did not end")
        time.sleep(0.5)
    codes = [r.returncode for r in replays]
    source_s = time.monotonic() - started
    first_s = source_s if first_s is None else first_s
    ends = _topic_ends(stack.bootstrap, [results, reports])
    group = f"connect-{tag}-sink-warehouse"
    while True:
        durable = _durable(stack, billing_url, group, results, reports)
        # A trailing transaction marker takes the last offset: "made durable" is one short of it.
        if all(durable.get(k, 0) >= end - 1 for k, end in ends.items() if end > 0):
            break
        if time.monotonic() - started > 1800:
            raise TimeoutError(f"{tag}: the sinks did not catch up")
        time.sleep(0.5)
    total_s = time.monotonic() - started
    for sink in sinks:
        sink.terminate()
    for sink in sinks:
        sink.wait(60)
    if any(codes):
        raise RuntimeError(f"{tag}: replay exit codes {codes}")
    return {"results": results_expected, "source_s": source_s, "total_s": total_s, "first_s": first_s,
            "topic": results}


def bare_fhir(base_url: str, since: int, until: int) -> float:
    import httpx

    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        params: Any = [("_lastUpdated", "ge" + iso(since)), ("_lastUpdated", "lt" + iso(until)),
                       ("_sort", "_lastUpdated"), ("_count", "1000"), ("_include", "DiagnosticReport:result"),
                       ("_include", "DiagnosticReport:subject")]
        url: str | None = f"{base_url}/DiagnosticReport"
        while url:
            page = client.get(url, params=params).json()
            params = None
            url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return time.monotonic() - started


def bare_kafka(bootstrap: str, source_topic: str) -> float:
    """Copy ``source_topic``'s records through a bare transactional producer and read them back."""
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    from common.topics import TopicSpec, create_topics

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                       "isolation.level": "read_committed", "enable.partition.eof": True})
    parts = reader.list_topics(source_topic, timeout=10).topics[source_topic].partitions
    reader.assign([TopicPartition(source_topic, p, 0) for p in parts])
    records, eof = [], set()
    while len(eof) < len(parts):
        for m in reader.consume(5000, timeout=1):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            records.append((m.key(), m.value()))
    reader.close()
    target = f"bare-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, (TopicSpec(target, 6),))
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": target, "linger.ms": 5,
                         "compression.type": "lz4", "partitioner": "murmur2_random"})
    producer.init_transactions()
    started = time.monotonic()
    for start in range(0, len(records), 1000):
        producer.begin_transaction()
        for key, value in records[start:start + 1000]:
            while True:
                try:
                    producer.produce(target, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.commit_transaction()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(target, p, 0) for p in range(6)])
    seen = 0
    while seen < len(records):
        seen += sum(1 for m in consumer.consume(5000, timeout=1) if not m.error())
    consumer.close()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--results-per-day", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from devstack.drill.stack import start_stack
    from devstack.lis_simulator.dataset import generate

    work = Path("/tmp") / f"labconnect-backfill-{uuid.uuid4().hex[:6]}"
    stack = start_stack(work)
    try:
        span = args.days * DAY_MS
        first = int(time.time() * 1000) - span - DAY_MS
        reports = int(args.days * args.results_per_day / 3.4)  # the data set averages ~3.4 results a report
        # Analysers' bursts: 70 % of reports move the clock by U(0, 2 x spacing), so 0.7 x spacing each.
        versions = generate(seed=11, reports=reports, start_ms=first, spacing_ms=int(span / reports / 0.7),
                            preliminary_share=0.0, correction_share=0.0)
        stack.fhir.publish(versions)
        stack.fhir.prerender()
        until = stack.fhir.clock_ms() + 1
        results = stack.fhir.result_count()
        print(f"LIS history: {len(stack.fhir.current)} reports, {results} results over {args.days} days", flush=True)
        middle = first + (until - first) // 2
        runs: dict[str, list[float]] = {"1 task": [], "2 tasks": [], "fhir bare": [], "kafka bare": []}
        source: dict[str, list[float]] = {"1 task": [], "2 tasks": []}
        startup: dict[str, list[float]] = {"1 task": [], "2 tasks": []}
        for n in range(args.rounds):
            one = run_pipeline(stack, f"r{n}-one", [(first, until)], results)
            two = run_pipeline(stack, f"r{n}-two", [(first, middle), (middle, until)], results)
            for mode, run in (("1 task", one), ("2 tasks", two)):
                runs[mode].append(run["total_s"])
                source[mode].append(run["source_s"])
                startup[mode].append(run["first_s"])
            runs["fhir bare"].append(bare_fhir(stack.fhir.base_url, first, until))
            runs["kafka bare"].append(bare_kafka(stack.bootstrap, one["topic"]))
            print(f"  round {n + 1}: " + ", ".join(f"{m} {v[-1]:.1f}s" for m, v in runs.items()), flush=True)
        median = {mode: statistics.median(v) for mode, v in runs.items()}
        ceiling = max(median["fhir bare"], median["kafka bare"])
        print(f"\nbackfill of {results} results ({args.days} days), medians of {args.rounds} interleaved rounds:")
        print(f"{'mode':<11} {'seconds':>8} {'results/s':>10} {'vs ceiling':>11} {'start-up':>9} "
              f"{'source done':>12} {'steady/s':>9} {'a year':>8}")
        for mode, seconds in median.items():
            rate = results / seconds
            if mode in source:
                up = statistics.median(startup[mode])
                steady = statistics.median(results / (t - s) for t, s in zip(runs[mode], startup[mode]))
                extra = (f"{up:>8.1f}s {statistics.median(source[mode]):>11.1f}s {steady:>9.0f} "
                         f"{YEAR_RESULTS / steady / 3600:>7.1f}h")
            else:
                extra = f"{'-':>9} {'-':>12} {'-':>9} {'-':>8}"
            print(f"{mode:<11} {seconds:>8.1f} {rate:>10.0f} {ceiling / seconds:>10.2f}x {extra}")
        print(f"ceiling: the slower bare stage ({ceiling:.1f}s). start-up: until the first record is in Kafka "
              f"(once per replay); steady/s: results / (seconds - start-up); a year: 36.5 M results at steady/s")
    finally:
        stack.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

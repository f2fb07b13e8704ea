"""How soon a SIGKILLed sink, started again at once, consumes again: static membership vs a
shorter session timeout vs the default dynamic membership.

    python bench/sink_recovery.py [--rounds 3] [--skip-default]

A real broker ($KAFKA_BOOTSTRAP_SERVERS, or one started here), the runtime's recording sink
(tests/support) as a real process on a fresh 3-partition topic. Each run: one record per
partition, start the sink and time its start to the third record delivered (``first``: a
fresh member joining an empty group, the ceiling a restart can reach); SIGKILL it, one more
record per partition, start it again and time that start to the sixth record (``restart``).
Modes, interleaved, ``--rounds`` times each:

* ``static``   CONSUMER_STATIC_MEMBERSHIP=true (group.instance.id), default session timeout (45 s)
* ``short``    dynamic membership, session.timeout.ms 10000 (heartbeat 3000)
* ``default``  dynamic membership, session.timeout.ms 45000 (librdkafka's default)

Printed: medians of each, and restart / first of the same runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = {
    "static": {"CONSUMER_STATIC_MEMBERSHIP": "true"},
    "short": {"CONSUMER_STATIC_MEMBERSHIP": "false", "KAFKA_SESSION_TIMEOUT_MS": "10000",
              "KAFKA_HEARTBEAT_INTERVAL_MS": "3000"},
    "default": {"CONSUMER_STATIC_MEMBERSHIP": "false"},
}
PARTITIONS = 3


def _delivered(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM effects").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _produce_one_per_partition(bootstrap: str, topic: str, first: int) -> None:
    from confluent_kafka import Producer

    from common.serde import SingleObjectSerde
    from tests.support.test_connectors import LAB_RESULT, lab_result

    serde = SingleObjectSerde()
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(PARTITIONS):
        producer.produce(topic, partition=partition, value=serde.encode(topic, LAB_RESULT, lab_result(first + partition)))
    assert producer.flush(30) == 0


def _time_until(db: Path, records: int, process: subprocess.Popen[bytes], limit: float = 120.0) -> float:
    start = time.monotonic()
    while _delivered(db) < records:
        if process.poll() is not None:
            raise RuntimeError(f"the sink exited with {process.returncode}")
        if time.monotonic() - start > limit:
            raise TimeoutError(f"{records} records not delivered in {limit:.0f}s")
        time.sleep(0.05)
    return time.monotonic() - start


def run(mode: str, bootstrap: str, admin: object, work: Path) -> tuple[float, float]:
    """(first start, restart after SIGKILL) in seconds, each from the process start."""
    from confluent_kafka.admin import NewTopic

    topic, status = f"bench-recovery-{uuid.uuid4().hex[:8]}", f"bench-status-{uuid.uuid4().hex[:8]}"
    futures = admin.create_topics([NewTopic(topic, PARTITIONS, 1),  # type: ignore[attr-defined]
                                   NewTopic(status, 1, 1, config={"cleanup.policy": "compact"})])
    for future in futures.values():
        future.result(30)
    db = work / f"{topic}.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPICS": topic,
           "CONNECTOR_NAME": topic, "RECORDING_DB": str(db), "STATUS_TOPIC": status,
           "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": status, "FLUSH_IDLE_MS": "100", "LOG_LEVEL": "WARNING",
           **MODES[mode]}
    log = open(work / f"{topic}.log", "ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "tests.support.run_test_connector", "recording-sink"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    _produce_one_per_partition(bootstrap, topic, 0)
    process = start()
    try:
        first = _time_until(db, PARTITIONS, process)
        time.sleep(1.0)  # committed, heartbeating: a task in its steady state
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        _produce_one_per_partition(bootstrap, topic, PARTITIONS)
        process = start()
        restart = _time_until(db, 2 * PARTITIONS, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    return first, restart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-default", action="store_true", help="leave out the 45 s mode")
    args = parser.parse_args()
    modes = [m for m in MODES if not (args.skip_default and m == "default")]
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from devstack.kafka import start_broker

        broker = start_broker()
        bootstrap = broker.bootstrap_servers
    try:
        from confluent_kafka.admin import AdminClient

        from common.kafka_clients import TOOL_LOG

        admin = AdminClient({"bootstrap.servers": bootstrap, "logger": TOOL_LOG})  # silent once the broker stops
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        with tempfile.TemporaryDirectory() as work:
            for round_ in range(args.rounds):
                for mode in modes:
                    first, restart = run(mode, bootstrap, admin, Path(work))
                    results[mode].append((first, restart))
                    print(f"round {round_ + 1} {mode:<8} first {first:5.1f} s  restart {restart:5.1f} s", flush=True)
        print(f"\nmedians of {args.rounds} (start -> consuming; ceiling: a fresh member into an empty group):")
        for mode in modes:
            first = statistics.median(r[0] for r in results[mode])
            restart = statistics.median(r[1] for r in results[mode])
            print(f"{mode:<8} restart {restart:5.1f} s   first (ceiling) {first:5.1f} s   restart / first = "
                  f"{restart / first:.1f}x")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

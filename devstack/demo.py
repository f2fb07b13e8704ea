"""The end-to-end demo: LIS simulator → source-lis → Kafka → sink-billing, sink-warehouse, sink-notify.

    scripts/demo [--reports 2000] [--keep]

Starts a local Kafka broker (or uses $KAFKA_BOOTSTRAP_SERVERS), creates the topics,
serves a generated LIS over FHIR R4, runs the connectors as separate processes with
the embedded defaults (SQLite billing database and notify ledger, local-directory
warehouse, a file outbox for messages), waits
until every result has flowed through, prints what arrived where, and stops
everything cleanly (SIGTERM). Everything it writes is under ``.demo/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"


def _connector(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(WORK / "logs" / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "common", "run", name], cwd=WORK,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json", **env},
                            stdout=log, stderr=subprocess.STDOUT)


class TopicReader:
    """Follows topics from the beginning with read_committed and keeps what it saw."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader",
                                  "isolation.level": "read_committed", "enable.auto.commit": False})
        assignment = []
        for topic in topics:
            for _ in range(50):  # freshly created topics need a moment for their leaders
                metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
                if metadata.error is None and all(p.leader >= 0 for p in metadata.partitions.values()):
                    break
                time.sleep(0.2)
            assignment += [TopicPartition(topic, p, 0) for p in metadata.partitions]
        self.consumer.assign(assignment)
        self.counts = {topic: 0 for topic in topics}
        self.event_topics = set(topics[:2])  # results and reports carry event ids
        self.event_ids: set[str] = set()
        from common.serde import SingleObjectSerde

        self.serde = SingleObjectSerde()

    def poll(self) -> None:
        while True:
            messages = self.consumer.consume(5000, timeout=0.5)
            if not messages:
                return
            for message in messages:
                if message.error():
                    continue
                self.counts[message.topic()] += 1
                if message.topic() in self.event_topics:
                    self.event_ids.add(self.serde.decode(message.value())[0]["event_id"])


def _later_changes(versions: list[Any], released: list[Any], after_ms: int) -> list[Any]:
    """The generated corrections, plus a cancellation of every 40th final report, dated
    after everything released so far (the LIS's clock moves on)."""
    from dataclasses import replace

    corrections = [v for v in versions if v.status == "corrected"]
    corrected = {v.id for v in corrections}
    # A report corrected and cancelled in one stage would show the LIS's poller only its
    # cancellation (the corrected version is superseded before any poll sees it).
    cancellations = [replace(v, status="cancelled", version=v.version + 1, results=())
                     for v in released[::40] if v.status == "final" and v.id not in corrected]
    return [replace(v, updated_ms=after_ms + 1000 + 10 * i) for i, v in enumerate(corrections + cancellations)]


def _billing_summary(db: Path) -> dict[str, Any]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        def one(sql: str) -> Any:
            try:
                return conn.execute(sql).fetchone()[0]
            except sqlite3.OperationalError:
                return None
        return {
            "charges": one("SELECT count(*) FROM billing_charges WHERE status <> 'cancelled'"),
            "ledger rows": one("SELECT count(*) FROM billing_ledger"),
            "corrections": one("SELECT count(*) FROM billing_ledger WHERE entry_type = 'correction'"),
            "reversals": one("SELECT count(*) FROM billing_ledger WHERE entry_type = 'reversal'"),
            "unpriced events": one("SELECT count(*) FROM billing_unpriced_events"),
        }


def _wait_for_notify(db: Path, reports: int, timeout: float = 60) -> bool:
    """True once sink-notify decided every report event and sent every message that may go now
    (quiet hours and caps defer some to later: those stay `deferred`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=10) as conn:
                decided = conn.execute("SELECT count(*) FROM notify_events").fetchone()[0]
                busy = conn.execute("SELECT count(*) FROM notify_messages WHERE state IN "
                                    "('pending', 'sending', 'retrying')").fetchone()[0]
            if decided >= reports and busy == 0:
                return True
        except sqlite3.OperationalError:
            pass
        time.sleep(1)
    return False


def _warehouse_summary(root: Path) -> dict[str, Any]:
    files = list(root.glob("**/*.parquet"))
    if not files:
        return {"files": 0, "rows": 0}
    import duckdb

    rows, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (_kafka_topic, _kafka_partition, _kafka_offset)) "
        f"FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true, union_by_name=true)").fetchall()[0]
    return {"files": len(files), "rows": rows, "distinct offsets": distinct}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=2000, help="reports the simulated LIS holds")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the data to flow")
    parser.add_argument("--keep", action="store_true", help="leave .demo/ in place for inspection")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from common.topics import STANDARD_TOPICS, TopicSpec, create_topics
    from devstack.lis_simulator.dataset import generate, latest
    from devstack.lis_simulator.fhir_server import FhirSimulator

    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    started = time.monotonic()
    if not bootstrap:
        from devstack.kafka import start_broker

        print("starting a local Kafka broker …", flush=True)
        broker = start_broker(data_dir=WORK / "kafka")
        bootstrap = broker.bootstrap_servers
        print(f"  Kafka ready on {bootstrap} in {time.monotonic() - started:.1f}s")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    codes: dict[str, int] = {}
    ok = False
    reader: TopicReader | None = None
    simulator = FhirSimulator()
    try:
        # On a shared cluster the demo's topics and connector names are its own, so an earlier
        # run's data and offsets cannot mix with this one's.
        prefix = "" if broker is not None else f"demo-{uuid.uuid4().hex[:6]}-"
        names = {t.name: prefix + t.name for t in STANDARD_TOPICS}
        create_topics(bootstrap, tuple(TopicSpec(names[t.name], t.partitions, t.config) for t in STANDARD_TOPICS))
        results, reports = names["lab-results"], names["lab-reports"]
        base_url = simulator.start(0)
        # Two stages, as a lab's day goes: first every report as released (final, or
        # cancelled), later corrections and cancellations of some final reports.
        versions = generate(seed=7, reports=args.reports)
        released = list(latest([v for v in versions if v.status != "corrected"]).values())
        simulator.publish(released)
        later = _later_changes(versions, released, simulator.clock_ms())
        expected = sum(len(v.results) for v in released + later)
        print(f"LIS simulator: {args.reports} reports at {base_url}; "
              f"{len(later)} corrections and cancellations follow once the first stage is in")

        common = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FLUSH_MAX_AGE_MS": "2000", "FLUSH_IDLE_MS": "1000",
                  "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": names["dead-letter"],
                  "OFFSET_STORAGE_TOPIC": names["connect-offsets"], "STATUS_TOPIC": names["connect-status"]}
        processes["source-lis"] = _connector("source-lis", {**common, "LIS_MODE": "fhir", "FHIR_BASE_URL": base_url,
                                                            "CONNECTOR_NAME": prefix + "source-lis",
                                                            "RESULTS_TOPIC": results, "REPORTS_TOPIC": reports,
                                                            "PATIENTS_TOPIC": names["patients"],
                                                            "FHIR_POLL_INTERVAL_MS": "1000"})
        processes["sink-billing"] = _connector("sink-billing", {
            **common, "CONNECTOR_NAME": prefix + "sink-billing", "TOPICS": reports, "BILLING_DATABASE_URL": f"sqlite:///{WORK / 'billing.db'}"})
        processes["sink-warehouse"] = _connector("sink-warehouse", {
            **common, "CONNECTOR_NAME": prefix + "sink-warehouse", "TOPICS": results, "WAREHOUSE_URL": f"file://{WORK / 'warehouse'}"})
        processes["sink-notify"] = _connector("sink-notify", {
            **common, "CONNECTOR_NAME": prefix + "sink-notify", "TOPICS": reports, "NOTIFY_CONTACTS_TOPIC": names["patients"],
            "NOTIFY_DATABASE_URL": f"sqlite:///{WORK / 'notify.db'}", "NOTIFY_OUTBOX_PATH": str(WORK / "outbox.jsonl"),
            # The simulated LIS day is 2026-01-01: accept its events as recent, and combine each
            # patient's reports over 2 s instead of 5 minutes so the demo ends quickly.
            "NOTIFY_MAX_EVENT_AGE_MS": str(10 * 365 * 86_400_000), "NOTIFY_COMBINE_WINDOW_MS": "2000",
            "NOTIFY_CRITICAL_EMAIL_TO": "oncall@lab.example"})

        reader = TopicReader(bootstrap, [results, reports, names["patients"], names["dead-letter"]])
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            reader.poll()
            rows = _warehouse_summary(WORK / "warehouse").get("rows", 0)
            print(f"\r  lab-results {reader.counts[results]:>7}/{expected}   warehouse rows {rows:>7}",
                  end="", flush=True)
            dead = [n for n, p in processes.items() if p.poll() is not None]
            if dead:
                print(f"\nconnector(s) exited early: {', '.join(dead)} — see .demo/logs/")
                return 1
            if later and reader.counts[reports] >= len(released):
                simulator.publish(later)
                later = []
            if not later and reader.counts[results] >= expected and rows >= expected:
                break
            time.sleep(1)
        print()
        time.sleep(3)  # let the sinks' last flush land

        reader.poll()
        print("\nKafka topics (records a read_committed consumer sees):")
        for topic, n in reader.counts.items():
            print(f"  {topic:<28} {n:>8}")
        print("Billing database (.demo/billing.db):")
        for key, value in _billing_summary(WORK / "billing.db").items():
            print(f"  {key:<16} {value}")
        print("Warehouse (.demo/warehouse, read with DuckDB):")
        for key, value in _warehouse_summary(WORK / "warehouse").items():
            print(f"  {key:<16} {value}")
        decided = _wait_for_notify(WORK / "notify.db", reader.counts[reports])
        print("Notifications (.demo/notify.db; messages in .demo/outbox.jsonl), `labconnect notify report`:")
        subprocess.run([sys.executable, "-m", "common", "notify", "report", "--since", "3650d",
                        "--database", f"sqlite:///{WORK / 'notify.db'}"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        print()
        subprocess.run([sys.executable, "-m", "common", "status", "--bootstrap", bootstrap,
                        "--topic", names["connect-status"]], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        warehouse = _warehouse_summary(WORK / "warehouse")
        ok = (reader.counts[results] == expected and reader.event_ids == simulator.expected_event_ids(history=True)
              and warehouse.get("rows") == warehouse.get("distinct offsets") == expected and decided)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(60) for name, process in processes.items()}
        print("\nstopped (SIGTERM): " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
        simulator.stop()
        if reader is not None:
            reader.consumer.close()
        if broker is not None:
            broker.stop()
        if not args.keep and broker is not None:
            shutil.rmtree(WORK / "kafka", ignore_errors=True)
    print(f"demo finished in {time.monotonic() - started:.0f}s: {'every result arrived exactly once' if ok else 'INCOMPLETE'}")
    return 0 if ok and all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

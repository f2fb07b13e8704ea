"""Billing sink write throughput into a local PostgreSQL: multirow vs COPY vs one INSERT per row.

    python bench/billing_db.py [--events 100000] [--batch 5000] [--single-events 20000]

Starts a throwaway PostgreSQL (devstack.postgres), migrates one fresh database
per method and drives BillingSinkTask.put/flush with LabReport-shaped records
(every event a first final, so each writes a charge and a ledger row). The bare
loop writes the same rows with one INSERT statement per row, one transaction
per batch. Prints events/s and the p99 time of one batch commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from common.records import SinkRecord  # noqa: E402
from connectors.sink_billing import tables  # noqa: E402
from connectors.sink_billing.events import billing_event  # noqa: E402
from connectors.sink_billing.schema import make_engine, upgrade  # noqa: E402
from connectors.sink_billing.settings import BillingSettings  # noqa: E402
from connectors.sink_billing.task import BillingSinkTask  # noqa: E402
from devstack.postgres import start_postgres  # noqa: E402

CODES = ["2345-7", "718-7", "58410-2", "24323-8", "4548-4", "2093-3"]
DAY_2026 = 1_767_225_600_000


def lab_reports(count: int, topic: str = "lab-reports") -> list[SinkRecord]:
    records = []
    for i in range(count):
        value = {
            "event_id": f"00000000-0000-5000-8000-{i:012d}", "event_type": "REPORT_FINAL",
            "timestamp": DAY_2026 + i, "version": 1, "patient_id": f"P{i % 5000:06d}",
            "accession": f"ACC{i // 3:09d}", "test_code": CODES[i % len(CODES)], "test_name": "x",
            "report_status": "final", "result_count": 3, "critical": False, "ordering_provider_id": None,
            "observed_time": None, "source_system": "LIS-A", "source_message_id": f"MSG{i:010d}", "metadata": {},
        }
        records.append(SinkRecord(topic, 0, i, DAY_2026, value["patient_id"], value, None, None, []))
    return records


def fresh_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def run_task(url: str, method: str, records: list[SinkRecord], batch: int) -> list[float]:
    task = BillingSinkTask(BillingSettings(billing_database_url=url, billing_write_method=method,
                                           billing_migrate_on_start=False))
    task.start(None)  # type: ignore[arg-type]
    commits = []
    for start in range(0, len(records), batch):
        part = records[start:start + batch]
        began = time.perf_counter()
        task.put(part)
        task.flush({(part[-1].topic, part[-1].partition): part[-1].offset + 1})
        commits.append(time.perf_counter() - began)
    task.stop()
    return commits


def run_single_inserts(url: str, records: list[SinkRecord], batch: int) -> list[float]:
    """The naive baseline: one INSERT per charge and per ledger row."""
    from datetime import datetime, timezone
    from decimal import Decimal

    engine = make_engine(url)
    commits = []
    for start in range(0, len(records), batch):
        began = time.perf_counter()
        with engine.begin() as conn:
            now = datetime.now(timezone.utc)
            for record in records[start:start + batch]:
                e = billing_event(record)
                audit = {"event_id": e.event_id, "source_message_id": e.source_message_id, "kafka_topic": e.topic,
                         "kafka_partition": e.partition, "kafka_offset": e.offset, "processed_at": now}
                key = {"accession": e.key.accession, "test_code": e.key.test_code,
                       "source_system": e.key.source_system}
                conn.execute(insert(tables.charges).values(
                    **key, **audit, status="charged", amount=Decimal("9.00"), currency="USD",
                    price_effective_from=now.date(), service_time=e.event_time, charge_event_id=e.event_id,
                    latest_version=e.version, latest_report_status=e.report_status,
                    latest_event_time=e.event_time))
                conn.execute(insert(tables.ledger).values(
                    **key, **audit, entry_type="charge", amount=Decimal("9.00"), currency="USD",
                    report_status=e.report_status, version=e.version, service_time=e.event_time))
        commits.append(time.perf_counter() - began)
    engine.dispose()
    return commits


def report(name: str, events: int, commits: list[float]) -> None:
    total = sum(commits)
    p99 = statistics.quantiles(commits, n=100)[98] if len(commits) >= 2 else commits[0]
    print(f"{name:<10} {events:>8} events  {events / total:>10,.0f} events/s  "
          f"p99 batch commit {p99 * 1000:>8.1f} ms  ({len(commits)} batches)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--single-events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the methods this many times")
    args = parser.parse_args()
    server = start_postgres()
    try:
        records = lab_reports(args.events)
        runs: list[tuple[str, Callable[[str], list[float]], int]] = [
            ("multirow", lambda url: run_task(url, "multirow", records, args.batch), args.events),
            ("copy", lambda url: run_task(url, "copy", records, args.batch), args.events),
        ]
        for round_no in range(args.rounds):
            for name, run, count in runs:
                url = fresh_database(server.url, f"bench_{name}_{round_no}")
                report(name, count, run(url))
        url = fresh_database(server.url, "bench_single")
        report("single", args.single_events, run_single_inserts(url, records[:args.single_events], args.batch))
    finally:
        server.stop()


if __name__ == "__main__":
    main()

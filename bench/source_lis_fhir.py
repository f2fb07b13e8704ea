"""Benchmark: simulator -> FHIR search over HTTP -> mapping -> SourceRecords (results/s), no Kafka.

    PYTHONPATH=. python bench/source_lis_fhir.py [--reports 20000] [--page-size 2000] [--server-process]

The simulator pre-renders its pages; by default it runs in this process (a thread),
with --server-process in its own process (closer to a real LIS on another host).
The lead adds the Kafka leg (SourceWorker) on top of the same loop.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from common.records import SourceRecord
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask


class _Context:
    connector_name = "bench"
    task_id = 0

    def offset(self, partition: dict[str, Any]) -> dict[str, Any] | None:
        return None


def run(base_url: str, page_size: int) -> tuple[int, int, float]:
    settings = LisSettings(lis_mode="fhir", fhir_base_url=base_url, fhir_page_size=page_size,
                           fhir_poll_interval_ms=0)
    task = LisSourceTask(settings)
    task.start(_Context())
    results = records = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    while True:
        batch = task.poll()
        task.on_committed(batch)
        for record in batch:
            if isinstance(record, SourceRecord):
                records += 1
                if record.topic == settings.results_topic:
                    results += 1
        if not task.source.poller.in_traversal:
            break
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    task.stop()
    return results, records, elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--server-process", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proc = None
    if args.server_process:
        from devstack.ports import free_port, wait_for_port

        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "devstack.lis_simulator", "--fhir-port", str(port),
                                 "--reports", str(args.reports), "--max-count", str(args.page_size)],
                                env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        while "serving" not in proc.stderr.readline():
            pass
        wait_for_port(port, 30)
        base = f"http://127.0.0.1:{port}/fhir"
    else:
        from devstack.lis_simulator import FhirSimulator, generate

        sim = FhirSimulator(max_count=args.page_size)
        base = sim.start()
        sim.publish(generate(seed=1, reports=args.reports))
        sim.prerender()
    try:
        best = 0.0
        for i in range(args.rounds):
            results, records, elapsed, cpu = run(base, args.page_size)
            rate = results / elapsed
            best = max(best, rate)
            # CPU time of this process (server thread included when in-process): robust to a shared machine.
            print(f"round {i + 1}: {results} results ({records} records) in {elapsed:.2f}s = {rate:,.0f} results/s "
                  f"wall, {records / elapsed:,.0f} records/s; {results / cpu:,.0f} results per CPU-second")
        print(f"best: {best:,.0f} results/s (goal >= 50,000)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End-to-end latency at a steady rate: LIS result time -> effect in each sink, whole pipeline.

    python bench/pipeline_latency.py [--rate 100] [--duration 120] [--json FILE]

Starts what the crash drill starts (devstack.drill: a broker, PostgreSQL, moto S3, the
provider server, the LIS simulator and the five connector processes: source-lis over FHIR
and over MLLP, sink-billing, sink-warehouse, sink-notify, with the drill's settings: FHIR
polled every second, sinks flushing after 1 s idle or 2 s), then has the LIS release a
lab day at a steady ``--rate`` results per second for ``--duration`` seconds, no faults.

The LIS result time is when the simulator makes a version available (FHIR) or sends it
(MLLP). The effect: for sink-warehouse, the Parquet object holding the result is listed in
S3; for sink-billing, the charge row of the report is visible in PostgreSQL; for
sink-notify, the provider server accepted the "results ready" message of the final report
(its own clock). S3 and PostgreSQL are polled every 0.25 s, so their figures carry up to a
quarter second of polling. Prints p50/p99 per sink and how many effects were seen.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import add_json_argument, row, write_rows  # noqa: E402

POLL_S = 0.25


def plan(rate: float, duration: float, start_ms: int) -> Any:
    """A drill day whose releases come at ``rate`` results/s over ``duration`` seconds."""
    from devstack.drill.workload import plan_day

    span_ms = int(duration * 1000 / 0.85)  # plan_day releases in the first 85 % of its span

    def day_of(reports: int) -> Any:
        return plan_day(seed=7, fhir_reports=reports * 2 // 3, hl7_reports=reports // 3, start_ms=start_ms,
                        span_ms=span_ms, poison=0)

    guess = max(30, int(rate * duration / 3))
    per_report = _results(day_of(guess)) / guess
    return day_of(max(30, round(rate * duration / per_report)))


def _results(day: Any) -> int:
    return sum(len(v.results) for v in day.fhir + day.hl7)


def release_times(day: Any) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(LabResult event id -> release ms, (source, accession) -> release ms of its first final)."""
    from connectors.source_lis.events import result_event_id
    from devstack.drill.workload import FHIR_SOURCE, FINAL_LIKE, HL7_SOURCE
    from devstack.lis_simulator.hl7_sender import OBX_STATUS, ts

    results: dict[str, int] = {}
    finals: dict[tuple[str, str], int] = {}
    for source, versions in ((FHIR_SOURCE, day.fhir), (HL7_SOURCE, day.hl7)):
        for v in versions:
            for i, res in enumerate(v.results):
                if source == FHIR_SOURCE:
                    event = result_event_id(source, v.accession, res.code, f"{v.id}-{i}", str(v.version))
                else:  # as the drill's expected HL7 ids: OBX status @ message time
                    event = result_event_id(source, v.accession, res.code, "",
                                            f"{OBX_STATUS[res.status]}@{ts(v.updated_ms)}")
                results.setdefault(event, v.updated_ms)
            if v.status in FINAL_LIKE:
                finals[(source, v.accession)] = min(finals.get((source, v.accession), v.updated_ms), v.updated_ms)
    return results, finals


class EffectWatcher:
    """Polls the stores and notes when each effect is first seen (wall clock, ms)."""

    def __init__(self, stack: Any, lake: Path) -> None:
        self.stack = stack
        self.lake = lake
        self.s3 = stack.s3_client()
        self.objects: set[str] = set()
        self.warehouse: dict[str, float] = {}  # event id -> seen
        self.billing: dict[tuple[str, str], float] = {}  # (source, accession) -> seen
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="effect-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def _run(self) -> None:
        while not self.stop_event.wait(POLL_S):
            now = time.time() * 1000
            try:
                self._poll_warehouse(now)
                self._poll_billing(now)
            except Exception as exc:  # a store still starting: the next poll sees it
                print(f"  watcher: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _poll_warehouse(self, now: float) -> None:
        import duckdb

        from devstack.drill.stack import BUCKET

        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="lake/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key in self.objects or not key.endswith(".parquet"):
                    continue
                self.objects.add(key)
                path = self.lake / key
                path.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(BUCKET, key, str(path))
                for (event_id,) in duckdb.sql(f"SELECT event_id FROM read_parquet('{path}')").fetchall():
                    self.warehouse.setdefault(event_id, now)

    def _poll_billing(self, now: float) -> None:
        from devstack.drill.stores import billing_ledger

        for source, accession, *_ in billing_ledger(self.stack):
            self.billing.setdefault((source, accession), now)


def notify_effects(stack: Any) -> dict[tuple[str, str], float]:
    """(source, accession) -> when the provider accepted the first message naming it."""
    from devstack.drill.stores import _query

    accessions = {key: json.loads(text) for key, text in _query(
        stack.notify_url, "SELECT message_key, accessions FROM notify_messages WHERE audience = 'patient'")}
    out: dict[tuple[str, str], float] = {}
    for message in stack.providers.messages():
        for source, accession in accessions.get(message.get("idempotency_key"), []):
            at = message["received_at"] * 1000
            out[(source, accession)] = min(out.get((source, accession), at), at)
    return out


def latencies(effects: dict[Any, float], causes: dict[Any, int]) -> list[float]:
    return sorted(seen - causes[key] for key, seen in effects.items() if key in causes)


def percentile(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(len(values) * q))] if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="results the LIS releases per second")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of releases")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds allowed after the last release")
    add_json_argument(parser)
    args = parser.parse_args()

    from devstack.drill.stack import CONNECTORS, start_stack
    from devstack.drill.workload import LisFeeds

    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    started = time.monotonic()
    stack = start_stack(work)
    try:
        for name in CONNECTORS:
            stack.start_connector(name)
        start_ms = int(time.time() * 1000) + 20_000  # the connectors are up by then
        day = plan(args.rate, args.duration, start_ms)
        results, finals = release_times(day)
        released = _results(day)
        print(f"services and connectors started in {time.monotonic() - started:.0f}s; releasing {released} results "
              f"({len(day.fhir)} FHIR and {len(day.hl7)} HL7 report versions) over {args.duration:.0f}s "
              f"= {released / args.duration:.0f} results/s", flush=True)
        watcher = EffectWatcher(stack, work / "lake")
        watcher.start()
        feeds = LisFeeds(day, stack.fhir, stack.mllp_port)
        feeds.start()
        deadline = time.monotonic() + (start_ms / 1000 - time.time()) + args.duration / 0.85 + args.settle
        while time.monotonic() < deadline:
            time.sleep(2)
            if feeds.done() and set(results) <= set(watcher.warehouse):
                time.sleep(10)  # billing and notify, whose share of finals is not known ahead
                break
        feeds.stop()
        watcher.stop()
        notify = notify_effects(stack)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    measured = {
        "sink-warehouse": (latencies(watcher.warehouse, results), len(results), "result -> object in S3"),
        "sink-billing": (latencies(watcher.billing, finals), len(finals), "final report -> charge row visible"),
        "sink-notify": (latencies(notify, finals), len(finals), "final report -> provider accepted"),
    }
    print(f"{'sink':<16} {'effects':>8} {'of':>7} {'p50 ms':>8} {'p99 ms':>8}  what")
    rows = []
    for sink, (values, expected, what) in measured.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"{sink:<16} {len(values):>8} {expected:>7} {p50 or 0:>8.0f} {p99 or 0:>8.0f}  {what}")
        rows.append(row(sink, len(values) / args.duration, p50_ms=p50, p99_ms=p99, latency=what,
                        note=f"{len(values)} of {expected} effects seen; mean {statistics.mean(values):.0f} ms"
                        if values else f"0 of {expected} effects seen"))
    print("(billing charges only billable tests, notify only patients with consent: 'of' counts every final)")
    write_rows(args.json, rows, rate=args.rate, duration_s=args.duration, released_results=released)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark in one go, each figure beside the bare ceiling of the same run, in one table.

    bench/run [--quick] [--only NAME[,NAME...]] [--out DIR]

Starts one broker and hands it to every benchmark (``KAFKA_BOOTSTRAP_SERVERS``); each
starts the PostgreSQL, moto S3 or provider server it needs, as it does alone. Runs, one
after the other (``--only`` picks some, ``--quick`` uses smaller sizes: ~15 minutes
instead of ~45 on 2 cores):

* ``codec``      bench/avro_codec.py: generated Avro codecs vs fastavro (CPU time)
* ``runtime``    bench/runtime_overhead.py: sink runtime vs bare consume (+ decode)
* ``source``     bench/source_lis_kafka.py: source-lis FHIR and MLLP with exactly-once vs
                 the bare producer and the bare transactional producer
* ``billing``    bench/sinks_from_kafka.py billing: sink-billing vs bare consume + decode
* ``billing-copy`` bench/billing_copy_path.py (where present): the COPY path vs a bare COPY
* ``warehouse``  bench/sinks_from_kafka.py warehouse: sink-warehouse vs bare consume + bulk
                 decode and vs a bare S3 put of the same objects
* ``notify``     bench/notify_send.py: sink-notify vs a bare httpx loop vs raw HTTP streams
* ``latency``    bench/pipeline_latency.py: the whole pipeline at a steady 100 results/s,
                 LIS result time -> effect in each sink (p50/p99)

Prints one table (records/s, MB/s, peak RSS, ratio to the ceiling named beside it, p50/p99
of the latency each benchmark measures) and writes it with every benchmark's rows as JSON
to ``bench/results/<UTC time>.json``. A benchmark that fails is named in the table and its
output's tail kept in the JSON; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@dataclass(frozen=True)
class Bench:
    name: str
    argv: list[str]  # after the script name; the --json FILE is added
    quick: list[str]
    timeout_s: float
    needs_broker: bool = True


BENCHES = [
    Bench("codec", ["bench/avro_codec.py", "--records", "20000", "--runs", "3"],
          ["bench/avro_codec.py", "--records", "5000", "--runs", "3"], 600, needs_broker=False),
    Bench("runtime", ["bench/runtime_overhead.py", "--records", "300000"],
          ["bench/runtime_overhead.py", "--records", "60000"], 1200),
    Bench("source", ["bench/source_lis_kafka.py"],
          ["bench/source_lis_kafka.py", "--reports", "4000", "--mllp-reports", "500", "--rounds", "1"], 2400),
    Bench("billing", ["bench/sinks_from_kafka.py", "billing", "--records", "100000"],
          ["bench/sinks_from_kafka.py", "billing", "--records", "20000"], 1800),
    Bench("billing-copy", ["bench/billing_copy_path.py", "--rounds", "3"],
          ["bench/billing_copy_path.py", "--rounds", "1", "--events", "20000"], 1800, needs_broker=False),
    Bench("warehouse", ["bench/sinks_from_kafka.py", "warehouse", "--records", "300000"],
          ["bench/sinks_from_kafka.py", "warehouse", "--records", "60000"], 1800),
    Bench("notify", ["bench/notify_send.py"],
          ["bench/notify_send.py", "--records", "500", "--rounds", "1", "--rate", "0"], 1800),
    Bench("latency", ["bench/pipeline_latency.py", "--rate", "100", "--duration", "120"],
          ["bench/pipeline_latency.py", "--rate", "100", "--duration", "45"], 1200, needs_broker=False),
]


def run_bench(bench: Bench, quick: bool, env: dict[str, str]) -> dict[str, Any]:
    argv = bench.quick if quick else bench.argv
    if not (ROOT / argv[0]).exists():
        return {"command": argv, "skipped": f"{argv[0]} is not in this tree", "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, *argv, *(["--json", str(out)] if _takes_json(argv[0]) else [])]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=bench.timeout_s)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, stdout, stderr = None, _text(exc.stdout), _text(exc.stderr) + f"\ntimed out after {exc.timeout}s"
        result: dict[str, Any] = {"command": argv, "exit": code, "seconds": time.perf_counter() - started,
                                  "stdout": stdout}
        if out.exists():
            result.update(json.loads(out.read_text()))
        elif code == 0:
            result["rows"] = _rows_from_text(bench.name, stdout)
        if code != 0:
            result["error"] = stderr[-4000:]
        result.setdefault("rows", [])
        return result


def _takes_json(script: str) -> bool:
    return "add_json_argument" in (ROOT / script).read_text()


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _rows_from_text(name: str, stdout: str) -> list[dict[str, Any]]:
    """For a benchmark without --json (bench/billing_copy_path.py): its printed medians."""
    from report import row

    rates = {label: float(value.replace(",", "")) for label, value in re.findall(
        r"^\s+(old \(\w+\)|new|bare COPY ceiling)\s+([\d,]+) events/s", stdout, re.M)}
    rows = []
    if "bare COPY ceiling" in rates:
        rows.append(row("bare COPY (unindexed tables)", rates["bare COPY ceiling"]))
    for label, rate in rates.items():
        if label != "bare COPY ceiling":
            rows.append(row(f"sink-billing COPY path, {label}", rate, ceiling="bare COPY (unindexed tables)"))
    return rows


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (f"{'benchmark':<13}{'path':<36}{'records/s':>11}{'MB/s':>7}{'peak RSS':>10}  "
            f"{'ratio':>6} {'to ceiling':<30}{'p50 ms':>8}{'p99 ms':>9}  latency of")
    lines = [head, "-" * len(head)]
    for name, result in results.items():
        if result.get("skipped") or (result.get("exit") not in (0, None) and not result["rows"]):
            why = result.get("skipped") or f"FAILED (exit {result.get('exit')}), see the JSON"
            lines.append(f"{name:<13}{why}")
            continue
        if result.get("exit") is None and not result["rows"]:
            lines.append(f"{name:<13}TIMED OUT, see the JSON")
            continue
        by_name = {r["name"]: r for r in result["rows"]}
        for r in result["rows"]:
            ceiling = by_name.get(r["ceiling"]) if r.get("ceiling") else None
            ratio = f"{r['records_per_s'] / ceiling['records_per_s']:.0%}" if ceiling else ""
            lines.append(
                f"{name:<13}{r['name'][:35]:<36}{r['records_per_s']:>11,.0f}{_num(r.get('mb_per_s'), 7, 1)}"
                f"{_num(r.get('peak_rss_mb'), 7, 0)}{' MB' if r.get('peak_rss_mb') else '   '}  {ratio:>6} "
                f"{(r['ceiling'] or '')[:29]:<30}{_num(r.get('p50_ms'), 8, 0)}{_num(r.get('p99_ms'), 9, 0)}  "
                f"{r.get('latency') or ''}")
    return "\n".join(lines)


def _num(value: float | None, width: int, places: int) -> str:
    return f"{value:>{width},.{places}f}" if value is not None else " " * (width - 1) + "-"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~15 minutes)")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(b.name for b in BENCHES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    if args.only and len(chosen) != len(args.only.split(",")):
        parser.error(f"--only takes {', '.join(b.name for b in BENCHES)}")

    started = datetime.now(UTC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    broker = None
    if any(b.needs_broker for b in chosen) and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        from devstack.kafka import start_broker

        print("starting the broker ...", flush=True)
        broker = start_broker()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
    results: dict[str, dict[str, Any]] = {}
    try:
        for bench in chosen:
            print(f"{bench.name}: {' '.join((bench.quick if args.quick else bench.argv))} ...", flush=True)
            results[bench.name] = run_bench(bench, args.quick, env)
            r = results[bench.name]
            state = r.get("skipped") or (f"exit {r['exit']}" if r["exit"] != 0 else "done")
            print(f"  {state} in {r.get('seconds', 0):.0f}s", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    text = table(results)
    finished = datetime.now(UTC)
    print(f"\nbench/run{' --quick' if args.quick else ''}: {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started:%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"started": started.isoformat(), "finished": finished.isoformat(),
                                "quick": args.quick, "commit": _commit(), "cores": os.cpu_count(),
                                "table": text, "benchmarks": results}, indent=2))
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if all(r.get("exit") == 0 or r.get("skipped") for r in results.values()) else 1


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

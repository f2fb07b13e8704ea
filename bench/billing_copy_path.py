"""sink-billing's COPY path against an older commit of itself and against a bare COPY, in one run.

    python bench/billing_copy_path.py [--events 60000] [--batch 5000] [--rounds 3] [--old-commit 2680adb]

Starts a throwaway PostgreSQL (devstack.postgres) and, interleaved, ``--rounds`` times:

* old: BillingSinkTask of ``--old-commit`` (checked out with ``git worktree`` into a
  temporary folder unless ``--old-tree`` names one), driven through start/put/flush/stop;
* new: BillingSinkTask of this tree, driven the same way by a runtime-like context that
  can rewind it (so it commits in the background: the clock stops when its last commit
  has finished, ``pre_commit(wait=True)``);
* bare: the same charge and ledger rows, built before the clock starts, binary-COPYed
  into tables without indexes or constraints (``CREATE TABLE ... (LIKE ...)``), one
  transaction per batch -- the ceiling of what any sink could write.

Each run is its own process on a fresh database migrated by its own code. Every event
is a first final (one charge row and one ledger row). Prints each run with where its
time went -- CPU of the Python process (all its threads) and of the database server
processes serving the run's connections, per event -- then the medians of the rounds
and the ratios new/old, old/bare and new/bare (of the medians, and the median of the
rounds' own ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CODES = ["2345-7", "718-7", "58410-2", "24323-8", "4548-4", "2093-3"]  # all on the example price list
DAY_2026 = 1_767_225_600_000


def lab_report(i: int) -> dict[str, Any]:
    return {"event_id": f"00000000-0000-5000-8000-{i:012d}", "event_type": "REPORT_FINAL", "timestamp": DAY_2026 + i,
            "version": 1, "patient_id": f"P{i % 5000:06d}", "accession": f"ACC{i // 3:09d}",
            "test_code": CODES[i % len(CODES)], "test_name": "x", "report_status": "final", "result_count": 3,
            "critical": False, "ordering_provider_id": None, "observed_time": None, "source_system": "LIS-A",
            "source_message_id": f"MSG{i:010d}", "metadata": {}}


# ------------------------------------------------------------------ one run, in its own process
def _python_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(url: str) -> float:
    """CPU seconds of the server processes now connected to the run's database (its sessions live
    as long as the run's pooled connections). Linux /proc; the server runs on this machine."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Measured:
    """Wall and Python CPU of the timed part; server CPU of the run's sessions (started with the run)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> Measured:
        self.wall, self.python = time.perf_counter(), _python_cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.python = time.perf_counter() - self.wall, _python_cpu() - self.python
        self.server = _server_cpu(self.url)  # before the run's connections close

    def result(self) -> dict[str, float]:
        return {"seconds": self.wall, "python_cpu": self.python, "server_cpu": self.server}


class _Runtime:
    """What the runtime offers a sink task here: it could rewind, but no run should need to."""

    connector_name = "bench"
    task_id = 0
    can_rewind = True

    def rewind(self) -> None:
        raise RuntimeError("a benchmark run failed in the background")

    def report(self, record: Any, error: BaseException, stage: str = "TASK_PUT") -> None:
        raise RuntimeError(f"record {record.offset} rejected: {error}")


def _as_the_worker_after_start() -> None:
    """What the runtime's worker does once the task has started, in trees whose runtime does it
    (common.heap: the start-up heap leaves the cyclic GC's walks; here it also holds the
    records built in advance, which a real consumer never has alive all at once)."""
    try:
        from common.heap import freeze_startup_heap
    except ImportError:
        return
    freeze_startup_heap()


def drive_task(url: str, events: int, batch: int) -> dict[str, float]:
    from common.records import SinkRecord
    from connectors.sink_billing.schema import make_engine, upgrade
    from connectors.sink_billing.settings import BillingSettings
    from connectors.sink_billing.task import BillingSinkTask

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    records = [SinkRecord("lab-reports", 0, i, DAY_2026, None, lab_report(i), None, None, []) for i in range(events)]
    task = BillingSinkTask(BillingSettings(billing_database_url=url, billing_write_method="copy",
                                           billing_migrate_on_start=False))
    task.start(_Runtime())  # type: ignore[arg-type]
    _as_the_worker_after_start()
    pre_commit = getattr(task, "pre_commit", None)  # absent in commits before background writes
    with Measured(url) as measured:
        for start in range(0, events, batch):
            part = records[start:start + batch]
            task.put(part)
            task.flush({("lab-reports", 0): part[-1].offset + 1})
            if pre_commit is not None:
                pre_commit({("lab-reports", 0): part[-1].offset + 1})
        if pre_commit is not None:
            pre_commit({}, wait=True)
    task.stop()
    return measured.result()


def drive_bare(url: str, events: int, batch: int) -> dict[str, float]:
    from datetime import datetime, timezone
    from decimal import Decimal

    import psycopg

    from connectors.sink_billing.schema import make_engine, upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    now = datetime.now(timezone.utc)
    charges, ledger = [], []
    for i in range(events):
        r = lab_report(i)
        at = datetime.fromtimestamp(r["timestamp"] / 1000, tz=timezone.utc)
        audit = [r["event_id"], r["source_message_id"], "lab-reports", 0, i, now]
        key = [r["accession"], r["test_code"], r["source_system"]]
        charges.append([*key, "charged", Decimal("9.00"), "USD", at.date(), at, r["event_id"], 1, "final", *audit, at])
        ledger.append([*audit, *key, "charge", Decimal("9.00"), "USD", "final", 1, at, r["event_id"]])
    charge_columns = ("accession, test_code, source_system, status, amount, currency, price_effective_from, "
                      "service_time, charge_event_id, latest_version, latest_report_status, event_id, "
                      "source_message_id, kafka_topic, kafka_partition, kafka_offset, processed_at, latest_event_time")
    ledger_columns = ("event_id, source_message_id, kafka_topic, kafka_partition, kafka_offset, processed_at, "
                      "accession, test_code, source_system, entry_type, amount, currency, report_status, version, "
                      "service_time, charge_event_id")
    charge_types = ["text"] * 4 + ["numeric", "text", "date", "timestamptz", "text", "int4", "text", "text", "text",
                                   "text", "int4", "int8", "timestamptz", "timestamptz"]
    ledger_types = ["text", "text", "text", "int4", "int8", "timestamptz", "text", "text", "text", "text", "numeric",
                    "text", "text", "int4", "timestamptz", "text"]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("CREATE TABLE bare_charges (LIKE billing_charges)")
        conn.execute("CREATE TABLE bare_ledger (LIKE billing_ledger)")
        conn.commit()
        with Measured(url) as measured:
            for start in range(0, events, batch):
                with conn.transaction(), conn.cursor() as cursor:
                    for name, columns, types, rows in (("bare_charges", charge_columns, charge_types, charges),
                                                       ("bare_ledger", ledger_columns, ledger_types, ledger)):
                        with cursor.copy(f"COPY {name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                            copy.set_types(types)
                            for row in rows[start:start + batch]:
                                copy.write_row(row)
        return measured.result()


# ------------------------------------------------------------------ the comparison
def fresh_database(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def old_tree(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"labconnect-{commit}-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True,
                   capture_output=True)
    return folder


def run(mode: str, tree: Path, url: str, args: argparse.Namespace) -> dict[str, float]:
    """One run in a fresh process whose imports come from ``tree``."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--drive", mode, "--tree", str(tree),
                          "--url", url, "--events", str(args.events), "--batch", str(args.batch)],
                         check=True, capture_output=True, text=True, cwd=tree)
    return {name: float(value) for name, value in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-commit", default="2680adb")
    parser.add_argument("--old-tree", type=Path, help="a checkout of --old-commit (default: a new git worktree)")
    parser.add_argument("--drive", choices=["task", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        sys.path.insert(0, str(args.tree))
        drive = drive_task if args.drive == "task" else drive_bare
        print(json.dumps(drive(args.url, args.events, args.batch)), flush=True)
        return

    sys.path.insert(0, str(ROOT))
    from devstack.postgres import start_postgres

    made = args.old_tree is None
    old = old_tree(args.old_commit) if made else args.old_tree
    server = start_postgres()
    rates: dict[str, list[float]] = {"old": [], "new": [], "bare": []}
    try:
        for round_no in range(args.rounds):
            for name, mode, tree in (("old", "task", old), ("new", "task", ROOT), ("bare", "bare", ROOT)):
                measured = run(mode, tree, fresh_database(server.url, f"bench_{name}_{round_no}"), args)
                rates[name].append(args.events / measured["seconds"])
                per_event = {k: v / args.events * 1e6 for k, v in measured.items()}
                print(f"round {round_no + 1}  {name:<4} {rates[name][-1]:>10,.0f} events/s   per event: wall "
                      f"{per_event['seconds']:6.1f} us, Python CPU {per_event['python_cpu']:6.1f} us, "
                      f"server CPU {per_event['server_cpu']:6.1f} us", flush=True)
    finally:
        server.stop()
        if made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    median = {name: statistics.median(values) for name, values in rates.items()}
    rounds = {pair: statistics.median(a / b for a, b in zip(rates[pair[0]], rates[pair[1]], strict=True))
              for pair in (("new", "old"), ("old", "bare"), ("new", "bare"))}
    print(f"\nmedians of {args.rounds} interleaved rounds, {args.events} events in batches of {args.batch}:")
    print(f"  old ({args.old_commit})   {median['old']:>10,.0f} events/s")
    print(f"  new                {median['new']:>10,.0f} events/s   new/old  {median['new'] / median['old']:.2f}x"
          f"   (median of the rounds' ratios {rounds[('new', 'old')]:.2f}x)")
    print(f"  bare COPY ceiling  {median['bare']:>10,.0f} events/s   old/bare {median['old'] / median['bare']:.0%}"
          f"   new/bare {median['new'] / median['bare']:.0%}   (rounds: {rounds[('old', 'bare')]:.0%}, "
          f"{rounds[('new', 'bare')]:.0%})")


if __name__ == "__main__":
    main()

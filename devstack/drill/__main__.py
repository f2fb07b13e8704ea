"""The crash drill: the whole pipeline under SIGKILLs and outages, then checked from the stores.

    scripts/drill [--duration 15m] [--rate 2] [--seed 1] [--pg-outage 30] [--keep]

Starts a broker, PostgreSQL, moto S3 (behind a fault proxy), the provider server and the
LIS simulator, runs source-lis (FHIR and MLLP), sink-billing, sink-warehouse and
sink-notify as processes, and releases a lab day over ``--duration`` while a chaos loop
SIGKILLs random connectors (restarting them), SIGKILLs and restarts the broker once, makes
S3 and the SMS provider answer 503 for a while and stops PostgreSQL. Then it waits for the
pipeline to settle, checks every store against the day, replays the last day from the
source, checks that nothing changed and no message was sent, prints a table and exits 1
on any loss or duplicate. Everything it writes is under ``.drill/``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from devstack.drill.chaos import ChaosLoop, ChaosPlan
from devstack.drill.stack import CONNECTORS, ROOT, Stack, start_stack
from devstack.drill.stores import (
    WarehouseReader, billing_ledger, caught_up, notify_messages, provider_messages, read_topics,
)
from devstack.drill.verdict import (
    SinkVerdict, billing_verdict, dlq_verdict, notify_verdict, table, warehouse_verdict,
)
from devstack.drill.workload import LabDay, LisFeeds, plan_day


def duration(text: str) -> float:
    """`90`, `90s`, `15m` or `1h` as seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def evaluate(day: LabDay, stack: Stack, warehouse: WarehouseReader) -> tuple[list[SinkVerdict], int]:
    """The verdict per store, and how many notify messages are still in flight."""
    messages = notify_messages(stack)
    busy = sum(1 for m in messages if m.state in ("pending", "sending", "retrying"))
    return [warehouse_verdict(day, warehouse.rows()), billing_verdict(day, billing_ledger(stack)),
            notify_verdict(day, messages, provider_messages(stack)),
            dlq_verdict(day, read_topics(stack, ("dead-letter",)).dead_letters)], busy


def settle(day: LabDay, stack: Stack, warehouse: WarehouseReader, timeout: float) -> list[SinkVerdict]:
    """Wait until every sink has read every committed record, nothing is missing and no
    message is in flight (a duplicate does not go away by waiting: that ends in the table)."""
    deadline = time.monotonic() + timeout
    while True:
        verdicts, busy = evaluate(day, stack, warehouse)
        done = all(v.lost == 0 for v in verdicts) and busy == 0 and caught_up(stack, read_topics(stack).ends)
        if done or time.monotonic() > deadline:
            if not done:
                print(f"  not settled after {timeout:.0f}s", flush=True)
            return verdicts
        time.sleep(3)


def replay_last_day(day: LabDay, stack: Stack, warehouse: WarehouseReader, timeout: float) -> dict[str, str]:
    """Replay both sources from a day before the drill; what changed in each store."""
    billing_before, messages_before = billing_ledger(stack), sorted(notify_messages(stack), key=lambda m: m.key)
    accepted_before = len(provider_messages(stack))
    rows_before = warehouse.rows()
    since = datetime.fromtimestamp(day.start_ms / 1000 - 86_400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    codes = stack.replay(("source-lis-fhir", "source-lis-hl7"), since, timeout)
    print(f"  replay --since {since}: exit codes {codes}", flush=True)
    contents = read_topics(stack)
    deadline = time.monotonic() + timeout
    while not caught_up(stack, contents.ends) and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(3)  # a sender thread's last due message, if the replay had made one
    rows_after = warehouse.rows()
    out: dict[str, str] = {}
    failed = [f"{n} exit {c}" for n, c in codes.items() if c != 0]
    replayed = sum(rows_after.replayed.values())
    extra = set(rows_after.replayed) - set(rows_before.live)
    out["sink-warehouse"] = ("unchanged" if rows_after.live == rows_before.live and not extra else "CHANGED") + (
        f" (+{replayed} rows flagged replay)")
    out["sink-billing"] = "unchanged" if billing_ledger(stack) == billing_before else "CHANGED"
    sent_after = len(provider_messages(stack))
    same = sorted(notify_messages(stack), key=lambda m: m.key) == messages_before and sent_after == accepted_before
    out["sink-notify"] = "unchanged, 0 sent" if same else f"CHANGED, {sent_after - accepted_before} sent"
    out["replayed"] = (f"{contents.replayed['lab-results']} results and {contents.replayed['lab-reports']} reports "
                       f"replayed to Kafka")
    if failed:
        out = {k: f"{v}; replay failed: {', '.join(failed)}" for k, v in out.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/drill", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=duration, default=duration("15m"), help="chaos phase (90s, 15m, ...)")
    parser.add_argument("--rate", type=float, default=2.0, help="reports the LIS releases per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg-outage", type=float, default=30.0, help="seconds PostgreSQL is stopped")
    parser.add_argument("--settle", type=float, default=None, help="seconds allowed to settle after the chaos")
    parser.add_argument("--work", type=Path, default=ROOT / ".drill")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.duration < 60:
        parser.error("--duration must be at least 60s")
    settle_s = args.settle if args.settle is not None else max(120.0, args.duration * 0.3)

    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    print("starting the broker, PostgreSQL, S3, the providers and the LIS simulator ...", flush=True)
    stack = start_stack(args.work)
    ok = False
    try:
        start_ms = int(time.time() * 1000) + 5000
        reports = max(30, int(args.rate * args.duration))
        day = plan_day(seed=args.seed, fhir_reports=reports * 2 // 3, hl7_reports=reports // 3, start_ms=start_ms,
                       span_ms=int(args.duration * 1000))
        for name in CONNECTORS:
            stack.start_connector(name)
        feeds = LisFeeds(day, stack.fhir, stack.mllp_port)
        feeds.start()
        chaos = ChaosLoop(stack, ChaosPlan.for_duration(args.duration, args.seed, args.pg_outage))
        print(f"services up in {time.monotonic() - started:.0f}s; chaos for {args.duration:.0f}s", flush=True)
        chaos.start()
        while time.monotonic() - chaos.started < args.duration:
            time.sleep(min(15.0, args.duration - (time.monotonic() - chaos.started)) if args.duration > 0 else 0)
            print(f"  {time.monotonic() - chaos.started:4.0f}s: {sum(chaos.log.kills.values())} kills", flush=True)
        chaos.finish()
        wait_feeds = time.monotonic() + 120
        while not feeds.done() and time.monotonic() < wait_feeds:
            time.sleep(1)
        feeds.stop()
        print(f"chaos over; settling (up to {settle_s:.0f}s) ...", flush=True)
        warehouse = WarehouseReader(stack, args.work / "lake")
        verdicts = settle(day, stack, warehouse, settle_s)
        print(f"settled at {time.monotonic() - started:.0f}s; replaying the last day from the source ...", flush=True)
        replay = replay_last_day(day, stack, warehouse, timeout=180)
        extra = [f"broker down {chaos.log.broker_down_s:.0f}s; S3 requests refused {stack.s3_proxy.failed}; "
                 f"SMS provider stats {stack.providers.stats()}; HL7 ACKs {feeds.acks}"]
        if chaos.log.own_exits:
            extra.append("connectors that exited on their own: " + ", ".join(
                f"{n} x{c}" for n, c in chaos.log.own_exits.items()))
        extra += feeds.errors
        extra.append(f"replay: {replay.pop('replayed')}")
        print()
        print(table(day, chaos.log.kills, chaos.log.faults, verdicts, replay, extra))
        ok = (all(v.ok for v in verdicts) and not feeds.errors
              and all(r.startswith("unchanged") and "replay failed" not in r
                      for k, r in replay.items() if k.startswith("sink-")))
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    verdict = "no loss, no duplicate" if ok else "LOSS OR DUPLICATES (see the table; logs in .drill/logs with --keep)"
    print(f"drill finished in {time.monotonic() - started:.0f}s: {verdict}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

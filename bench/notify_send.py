"""sink-notify end to end: from the real broker to a local Twilio-compatible server, next to a bare httpx loop.

    python bench/notify_send.py [--records 2000] [--rounds 3] [--concurrency 64] [--rate 50]

N patients, each with a PatientContact (SMS consent) and one final LabReport, on fresh
topics of a real broker ($KAFKA_BOOTSTRAP_SERVERS, or one started here); devstack's
provider server (its own process) answers every request and is reset before each run.
Once, the server's own ceiling:

* ``raw``   the same requests over ``--concurrency`` keep-alive asyncio streams, no HTTP library;

then, interleaved, ``--rounds`` times each:

* ``bare``  a plain ``httpx.AsyncClient`` configured as the sink's (one pool of ``--concurrency``
            connections) posting the same N Twilio form requests (To/From/Body, basic auth,
            Idempotency-Key) with ``--concurrency`` in flight, in its own process;
* ``sink``  sink-notify as a real process (``python -m common run sink-notify``), fresh topics
            and a fresh SQLite ledger, limiter off, NOTIFY_MAX_IN_FLIGHT=``--concurrency``.
            The contacts are produced first and the reports only once every contact is in the
            ledger, as in production, where the compacted topic was read long ago. (With both
            read at once, a message the sender defers as ``awaiting_contact`` while the
            contact's batch is being recorded misses its wake-up and waits NOTIFY_CONTACT_WAIT_MS.)

notifications/s is on the provider server's clock: (N - 1) over the time from the first to
the last accepted message, for every mode. ``to N``: the client's run, or from producing the
reports to the N-th message (so it includes the consumer's intake of the reports).
Latency: raw and bare, the client's request->response; sink, the ledger's claim->sent
(``sent_at - first_attempt_at``, ms resolution: the intent commit, rendering, the request and
the wait for the sender's next turn of its loop). Peak RSS: VmHWM of the client child
at its end, and of the connector process just before it is stopped.

Then one sink run with the limiter on (NOTIFY_SMS_RATE_PER_S=``--rate``, N = rate x 20, about
20 s): the achieved rate from the 10th to the last message the provider accepted, and its
deviation from the configured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import add_json_argument, row, write_rows  # noqa: E402

LAB_REPORT = "com.drdangslab.events.LabReport"
PATIENT = "com.drdangslab.events.PatientContact"
SID, TOKEN, FROM = "ACtest", "test-token", "+15550000000"
KEY_NAMESPACE = uuid.UUID("6c1f0c55-2b8e-4d0a-9a3e-0f7d5b2e9a41")  # the bare loop's keys


def patient(i: int) -> str:
    return f"P{i:06d}"


def phone_of(i: int) -> str:
    return f"+1555{i:07d}"  # one number per patient: the check counts distinct recipients


def contact(i: int, now: int) -> dict[str, Any]:
    return {"patient_id": patient(i), "timestamp": now, "phone": phone_of(i), "email": None,
            "sms_consent": True, "email_consent": False, "time_zone": "UTC", "language": "en",
            "source_system": "lis"}


def final_report(i: int, now: int) -> dict[str, Any]:
    accession = f"ACC{i:09d}"
    return {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lis|{accession}|final|1")), "event_type": "REPORT_FINAL",
            "timestamp": now, "version": 1, "patient_id": patient(i), "accession": accession,
            "test_code": "58410-2", "test_name": "Test", "report_status": "final", "result_count": 3,
            "critical": False, "ordering_provider_id": None, "observed_time": None, "source_system": "lis",
            "source_message_id": f"MSG{i:010d}", "metadata": {}}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rate(times: list[float], skip: int = 0) -> float:
    """Messages per second between the ``skip``-th and the last of these (sorted) timestamps."""
    times = times[skip:]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


# -- producing -------------------------------------------------------------------------------------------

def produce(bootstrap: str, topic: str, schema: str, make: Any, count: int) -> None:
    """``count`` records ``make(i, now)``, keyed by patient as source-lis keys them."""
    from confluent_kafka import Producer

    from common.serde import SingleObjectSerde

    serde = SingleObjectSerde()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4",
                         "partitioner": "murmur2_random"})
    now = int(time.time() * 1000)
    for i in range(count):
        value = make(i, now)
        while True:
            try:
                producer.produce(topic, key=value["patient_id"], value=serde.encode(topic, schema, value))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def create_topics(bootstrap: str, topics: list[Any]) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # not the %6 BGQUEUE note on close
    for future in admin.create_topics(topics).values():
        future.result(30)
    return [topic.topic for topic in topics]


# -- bare: the httpx loop, and a raw-socket client for the server's own ceiling (child processes) -------

def _requests(count: int) -> tuple[list[str], list[dict[str, str]]]:
    """The N requests the sink would send: keys, and To/From/Body with the shipped en template's body."""
    from connectors.sink_notify.templates import Templates

    keys = [str(uuid.uuid5(KEY_NAMESPACE, f"ready|lis|ACC{i:09d}")) for i in range(count)]
    text = keys[0].replace("-", "").upper()
    body = Templates(lab_name="Your lab", portal_url="https://portal.example.org").render(
        "results_ready", "sms", "en", reference=f"{text[:4]}-{text[4:8]}").body
    return keys, [{"To": phone_of(i), "From": FROM, "Body": body} for i in range(count)]


async def _bare(url: str, count: int, concurrency: int) -> dict[str, Any]:
    """httpx.AsyncClient as the sink configures it (one pool of ``concurrency``), ``concurrency`` in flight."""
    import httpx

    keys, forms = _requests(count)
    endpoint = f"{url}/2010-04-01/Accounts/{SID}/Messages.json"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failed = 0
    queue = iter(range(count))

    async with httpx.AsyncClient(auth=(SID, TOKEN), limits=limits, timeout=httpx.Timeout(10.0)) as client:
        async def worker() -> None:
            nonlocal failed
            for i in queue:  # shared iterator: the next free worker takes the next message
                began = time.perf_counter()
                response = await client.post(endpoint, data=forms[i], headers={"Idempotency-Key": keys[i]})
                latencies.append(time.perf_counter() - began)
                failed += response.status_code >= 300

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"mode": "bare", "sent": count - failed, "failed": failed, "wall_s": elapsed,
            "latency_ms": [_percentile(latencies, q) * 1000 for q in (.5, .95, .99)]}


async def _raw(url: str, count: int, concurrency: int) -> dict[str, Any]:
    """The same requests over ``concurrency`` keep-alive asyncio streams, no HTTP library: the server's ceiling."""
    from base64 import b64encode
    from urllib.parse import urlencode, urlsplit

    keys, forms = _requests(count)
    where = urlsplit(url)
    auth = b64encode(f"{SID}:{TOKEN}".encode()).decode()
    latencies: list[float] = []
    failed = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        for i in queue:
            body = urlencode(forms[i]).encode()
            began = time.perf_counter()
            writer.write(f"POST /2010-04-01/Accounts/{SID}/Messages.json HTTP/1.1\r\nHost: {where.netloc}\r\n"
                         f"Authorization: Basic {auth}\r\nIdempotency-Key: {keys[i]}\r\n"
                         f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            await reader.readexactly(int(head.split("content-length:")[1].split("\r\n")[0]))
            latencies.append(time.perf_counter() - began)
            failed += not head.startswith("http/1.1 2")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"mode": "raw", "sent": count - failed, "failed": failed, "wall_s": time.perf_counter() - started,
            "latency_ms": [_percentile(latencies, q) * 1000 for q in (.5, .95, .99)]}


def run_client(mode: str, args: argparse.Namespace, providers: Any) -> dict[str, Any]:
    providers.reset()
    out = subprocess.run([sys.executable, __file__, "--mode", mode, "--url", providers.url,
                          "--records", str(args.records), "--concurrency", str(args.concurrency)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} client failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    received = sorted(m["received_at"] for m in providers.messages("sms"))
    if len(received) != args.records or result["failed"]:
        raise RuntimeError(f"{mode} client: the provider holds {len(received)} of {args.records} messages")
    result["per_s"] = _rate(received)
    return result


# -- sink: the connector as a real process ---------------------------------------------------------------

def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _ledger_count(ledger: Path, sql: str) -> int:
    try:
        with sqlite3.connect(ledger, timeout=5) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def run_sink(args: argparse.Namespace, providers: Any, workdir: Path, tag: str, count: int,
             rate: float = 0.0) -> dict[str, Any]:
    """Fresh topics and ledger; start sink-notify on the contacts; then the reports; wait for ``count`` SMS."""
    from confluent_kafka.admin import NewTopic

    reports, patients = create_topics(args.bootstrap, [
        NewTopic(f"bench-reports-{tag}", 3, 1), NewTopic(f"bench-patients-{tag}", 3, 1,
                                                         config={"cleanup.policy": "compact"})])
    produce(args.bootstrap, patients, PATIENT, contact, count)
    ledger = workdir / f"notify-{tag}.db"
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json",
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap, "CONNECTOR_NAME": f"bench-notify-{tag}",
        "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": args.dlq, "STATUS_TOPIC": args.status,
        "TOPICS": reports, "NOTIFY_CONTACTS_TOPIC": patients, "NOTIFY_DATABASE_URL": f"sqlite:///{ledger}",
        "NOTIFY_CHANNELS": "sms", "NOTIFY_SMS_PROVIDER": "twilio", "TWILIO_BASE_URL": providers.url,
        "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM": FROM,
        "NOTIFY_COMBINE_WINDOW_MS": "0", "NOTIFY_QUIET_HOURS_START": "00:00", "NOTIFY_QUIET_HOURS_END": "00:00",
        "NOTIFY_SMS_MAX_PER_DAY": "1000", "NOTIFY_SMS_MAX_PER_WEEK": "1000",
        "NOTIFY_MAX_IN_FLIGHT": str(args.concurrency), "NOTIFY_SMS_RATE_PER_S": str(rate),
        "FLUSH_IDLE_MS": "200", "FLUSH_MAX_AGE_MS": "1000",
    }
    providers.reset()
    log_path = workdir / f"notify-{tag}.log"

    def check(what: str) -> None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sink-notify {'exited' if process.poll() is not None else 'timed out'} waiting for "
                               f"{what}; log:\n{log_path.read_text()[-3000:]}")

    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "common", "run", "sink-notify"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + args.timeout
        # Every contact in the ledger before the first report: as in production, where the compacted
        # topic was materialised long ago (and see the module docstring on the contact race).
        while _ledger_count(ledger, "SELECT count(*) FROM notify_contacts") < count:
            check(f"{count} contacts in the ledger")
            time.sleep(0.2)
        started = time.time()
        produce(args.bootstrap, reports, LAB_REPORT, final_report, count)
        intake_end = None  # when every report event was committed to the ledger (to 0.1 s)
        while (accepted := providers.stats()["accepted"]) < count:
            check(f"{count} messages at the provider (has {accepted})")
            time.sleep(0.1)
            if intake_end is None and _ledger_count(ledger, "SELECT count(*) FROM notify_events") >= count:
                intake_end = time.time()
        reached = time.time()
        peak_mb = _vm_hwm_mb(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    messages = providers.messages("sms")
    received = sorted(m["received_at"] for m in messages)
    stats = providers.stats()
    with sqlite3.connect(ledger) as db:
        latencies = [row[0] for row in db.execute(
            "SELECT sent_at - first_attempt_at FROM notify_messages WHERE state = 'sent'")]
        states = dict(db.execute("SELECT state, count(*) FROM notify_messages GROUP BY state").fetchall())
        retried = db.execute("SELECT count(*) FROM notify_messages WHERE attempts > 1").fetchone()[0]
    intake_end = intake_end or reached
    if len(received) != count or len({m["to"] for m in messages}) != count:
        raise RuntimeError(f"sink: the provider holds {len(received)} messages for {count} patients")
    after_intake = [t for t in received if t > intake_end]
    return {
        "mode": "sink" if not rate else f"sink {rate:g}/s", "sent": len(received), "per_s": _rate(received),
        "to_n_s": reached - started, "first_send_s": received[0] - started, "intake_s": intake_end - started,
        "per_s_after_intake": _rate(after_intake) if len(after_intake) >= max(100, count // 10) else None,
        "latency_ms": [_percentile(latencies, q) for q in (.5, .95, .99)], "peak_rss_mb": peak_mb,
        "states": states, "retried": retried, "throttled": stats["throttled"], "received": received,
    }


# -- report --------------------------------------------------------------------------------------------

def _row(r: dict[str, Any]) -> str:
    p50, p95, p99 = r["latency_ms"]
    wall = r["to_n_s"] if "to_n_s" in r else r["wall_s"]
    return (f"{r['mode']:<12} {r['per_s']:>9,.0f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {r['peak_rss_mb']:>6.0f} MB"
            f" {wall:>7.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="patients = SMS per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="bare/sink pairs, interleaved (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--rate", type=float, default=50.0, help="limiter run: NOTIFY_SMS_RATE_PER_S (0: skip)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one sink run may take")
    parser.add_argument("--mode", choices=["bare", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.mode:  # child process: one client run, one JSON line
        result = asyncio.run((_bare if args.mode == "bare" else _raw)(args.url, args.records, args.concurrency))
        result["peak_rss_mb"] = _vm_hwm_mb(os.getpid())  # ru_maxrss would carry the parent's over fork+exec
        print(json.dumps(result))
        return 0

    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    bench_started = time.perf_counter()
    services: list[Any] = []
    args.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    try:
        if not args.bootstrap:
            from devstack.kafka import start_broker

            services.append(start_broker())
            args.bootstrap = services[-1].bootstrap_servers
        from confluent_kafka.admin import NewTopic

        from devstack.providers import start_providers

        services.append(start_providers())
        providers = services[-1]
        run = uuid.uuid4().hex[:6]
        args.dlq, args.status = create_topics(args.bootstrap, [
            NewTopic(f"bench-notify-dlq-{run}", 1, 1),
            NewTopic(f"bench-notify-status-{run}", 1, 1, config={"cleanup.policy": "compact"})])
        workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
        print(f"{args.records} patients x 1 final report, {args.concurrency} in flight, SQLite ledger in {workdir}")
        print(f"{'mode':<12} {'notif/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'peak RSS':>9} {'to N':>9}")
        raw = run_client("raw", args, providers)
        print(_row(raw))
        bare: list[dict[str, Any]] = []
        sink: list[dict[str, Any]] = []
        for n in range(args.rounds):
            bare.append(run_client("bare", args, providers))
            print(_row(bare[-1]))
            sink.append(run_sink(args, providers, workdir, f"{run}-{n}", args.records))
            r = sink[-1]
            print(_row(r))
            after = f", {r['per_s_after_intake']:,.0f}/s after it" if r["per_s_after_intake"] else ""
            print(f"{'':<12} first send +{r['first_send_s']:.1f} s, ledger intake done +{r['intake_s']:.1f} s"
                  f"{after}; ledger {r['states']}, retried {r['retried']}, 429s {r['throttled']}")
        bare_median = statistics.median(r["per_s"] for r in bare)
        sink_median = statistics.median(r["per_s"] for r in sink)
        print(f"median of {args.rounds}: bare {bare_median:,.0f}/s, sink {sink_median:,.0f}/s, "
              f"sink / bare = {sink_median / bare_median:.0%} (goal >= 60%); raw / bare = {raw['per_s'] / bare_median:.1f}x")
        print("  notif/s: provider clock, first to last accepted; latency: raw/bare request->response, sink "
              "claim->sent (ledger, ms);\n  to N: client run / reports produced -> N-th message at the provider")
        median_bare = min(bare, key=lambda r: abs(r["per_s"] - bare_median))
        median_sink = min(sink, key=lambda r: abs(r["per_s"] - sink_median))
        write_rows(args.json, [
            row("raw HTTP streams", raw["per_s"], peak_rss_mb=raw["peak_rss_mb"], p50_ms=raw["latency_ms"][0],
                p99_ms=raw["latency_ms"][2], latency="request->response"),
            row("bare httpx", bare_median, peak_rss_mb=median_bare["peak_rss_mb"], ceiling="raw HTTP streams",
                p50_ms=median_bare["latency_ms"][0], p99_ms=median_bare["latency_ms"][2],
                latency="request->response"),
            row("sink-notify", sink_median, peak_rss_mb=median_sink["peak_rss_mb"], ceiling="bare httpx",
                p50_ms=median_sink["latency_ms"][0], p99_ms=median_sink["latency_ms"][2], latency="claim->sent"),
        ])
        if args.rate > 0:
            count = int(args.rate * 20)
            r = run_sink(args, providers, workdir, f"{run}-limited", count, rate=args.rate)
            achieved = _rate(r["received"], skip=9)
            p50, p95, p99 = r["latency_ms"]
            print(f"limiter {args.rate:g}/s, {count} messages: {achieved:.2f}/s from the 10th to the last message "
                  f"({(achieved - args.rate) / args.rate:+.1%}, goal within 5%); claim->sent p50 {p50:.0f} ms "
                  f"p95 {p95:.0f} ms p99 {p99:.0f} ms (includes the limiter queue); 429s {r['throttled']}, "
                  f"peak {r['peak_rss_mb']:.0f} MB")
        shutil.rmtree(workdir)  # kept when a run failed: its ledgers and connector logs
    finally:
        for service in reversed(services):
            service.stop()
    print(f"total {time.perf_counter() - bench_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

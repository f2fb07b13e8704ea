"""Benchmark: LIS simulator -> source-lis -> the real broker, exactly-once on, next to the bare producer.

    PYTHONPATH=. python bench/source_lis_kafka.py [--reports 24000] [--page-size 1000] [--rounds 3]
                                                  [--mllp-reports 2000] [--mllp-senders 8]

Fresh topics on a real broker ($KAFKA_BOOTSTRAP_SERVERS, or one started here). Each mode
runs in its own process, so each peak RSS (``ru_maxrss``) is that mode's own. The FHIR modes
run ``--rounds`` times, interleaved (the order rotates each round), and the summary gives
the medians and their ratios:

* ``fhir``        simulator (its own process, pages pre-rendered) -> FHIR search over HTTP ->
                  LisSourceTask -> the real SourceWorker: one transaction per page with the cursor
* ``fhir x2``     the same with TASKS_MAX=2: two processes, one connector, each its own
                  lastUpdated windows (FHIR_SLICE_SECONDS) and cursor; the rate is all results over
                  the wall time from the first start to the last end
* ``fhir-bare``   the same records (polled and encoded before the clock starts) through a plain
                  confluent-kafka Producer with the worker's settings: non-transactional
                  (idempotent), then transactional with the page sizes the worker had
* ``mllp``        N MllpSender connections (their own process, each waits for its ACK) ->
                  MLLP listener -> SourceWorker; ACK after the commit
* ``mllp-bare``   the same HL7 records, mapped and encoded first, bare producer as above with the
                  worker's mean transaction size

Latency is per transaction (begin -> commit returned: produce, offsets and commit) for the
worker, and per transaction for the transactional bare producer. The worker commits on its
own thread while it polls the next page, so its "commit wait" is only the time it was blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import add_json_argument, write_rows  # noqa: E402
from report import row as report_row  # noqa: E402

PRODUCER_SETTINGS = {"enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5,
                     "compression.type": "lz4"}  # as common._source_worker.SourceWorker


TIMINGS = {"poll_s": 0.0, "encode_s": 0.0}  # of the bare modes' preparation, outside their clock


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from connectors.source_lis.settings import LisSettings

    return LisSettings(kafka_bootstrap_servers=args.bootstrap,
                       connector_name=args.connector or f"bench-{uuid.uuid4().hex[:8]}",
                       offset_storage_topic=args.offsets, errors_deadletterqueue_topic_name=args.dlq,
                       results_topic=args.results, reports_topic=args.reports_topic, patients_topic=args.patients,
                       **overrides)


# -- worker modes (child processes) ----------------------------------------------------------------------

def _worker(args: argparse.Namespace, settings: Any, task: Any) -> dict[str, Any]:
    """Run the real SourceWorker on ``task`` until it is done or SIGTERM; time every transaction."""
    from common._source_worker import SourceWorker
    from common.status import Control, StatusReporter
    from connectors.source_lis.connector import CONNECTOR

    latencies: list[float] = []
    sizes: list[int] = []
    results = 0
    spent = {"poll_s": 0.0, "write_s": 0.0, "wait_s": 0.0}

    class TimedWorker(SourceWorker):
        def _poll(self) -> Any:
            started = time.perf_counter()
            try:
                return super()._poll()
            finally:
                spent["poll_s"] += time.perf_counter() - started

        def _write(self, batch: Any, context: Any) -> None:
            started = time.perf_counter()
            super()._write(batch, context)
            spent["write_s"] += time.perf_counter() - started

        def _settle(self, context: Any, polled: Any = ()) -> None:
            nonlocal results
            commit = self._in_flight
            started = time.perf_counter()
            super()._settle(context, polled)
            spent["wait_s"] += time.perf_counter() - started
            if commit is not None:
                latencies.append(commit.ended - commit.began)
                sizes.append(len(commit.batch))
                results += sum(1 for r in commit.batch if getattr(r, "topic", None) == settings.results_topic)

    control = Control()
    signal.signal(signal.SIGTERM, lambda *_: control.request_stop())
    worker = TimedWorker(CONNECTOR, settings, task, StatusReporter(settings.connector_name, 0, "source"), control)
    clock = {"started": 0.0, "cpu": 0.0, "wall": 0.0}
    original_start = task.start

    def start(context: Any) -> None:  # the clock starts after init_transactions and reading the offsets
        original_start(context)
        clock["started"], clock["cpu"], clock["wall"] = time.perf_counter(), time.process_time(), time.time()

    task.start = start
    worker.run()
    elapsed = time.perf_counter() - clock["started"]
    cpu_started = clock["cpu"]
    return {"results": results, "records": sum(sizes), "transactions": len(sizes), "elapsed_s": elapsed,
            "t_start": clock["wall"], "t_end": time.time(),
            "cpu_s": time.process_time() - cpu_started, **spent, "commit_s": sum(latencies),
            "p50_ms": _percentile(latencies, 0.5) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000, "sizes": sizes, "peak_rss_mb": _peak_rss_mb()}


def _fhir_task(settings: Any) -> Any:
    """LisSourceTask that is done after one full traversal of the search (the whole data set)."""
    from connectors.source_lis.task import LisSourceTask

    class OneTraversal(LisSourceTask):
        traversed = False

        def poll(self) -> Any:
            if self.traversed:
                return []
            batch = super().poll()
            self.traversed = not self.source.poller.in_traversal
            return batch

        def done(self) -> bool:
            return self.traversed

    return OneTraversal(settings)


def child_fhir(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings(args, lis_mode="fhir", fhir_base_url=args.base_url, fhir_page_size=args.page_size,
                         fhir_poll_interval_ms=0, tasks_max=args.tasks_max, task_id=args.task_id)
    return _worker(args, settings, _fhir_task(settings))


def child_mllp(args: argparse.Namespace) -> dict[str, Any]:
    from connectors.source_lis.task import LisSourceTask

    settings = _settings(args, lis_mode="hl7-mllp", mllp_port=args.mllp_port)
    return _worker(args, settings, LisSourceTask(settings))


def _encoded_fhir_batches(args: argparse.Namespace) -> list[list[tuple[str, str | None, bytes, Any]]]:
    from common.records import SourceRecord
    from common.serde import make_serde

    settings = _settings(args, lis_mode="fhir", fhir_base_url=args.base_url, fhir_page_size=args.page_size,
                         fhir_poll_interval_ms=0)
    task = _fhir_task(settings)

    class _Context:
        connector_name, task_id = settings.connector_name, 0

        def offset(self, partition: Any) -> None:
            return None

    task.start(_Context())
    serde = make_serde(None, True)
    batches = []
    while not task.done():
        started = time.perf_counter()
        batch = task.poll()
        task.on_committed(batch)
        encoding = time.perf_counter()
        batches.append([(r.topic, r.key, serde.encode(r.topic, r.schema, r.value), r.timestamp_ms)
                        for r in batch if isinstance(r, SourceRecord)])
        TIMINGS["poll_s"] += encoding - started
        TIMINGS["encode_s"] += time.perf_counter() - encoding
    task.stop()
    return batches


def _encoded_mllp_batches(args: argparse.Namespace, batch_size: int) -> list[list[tuple[str, str | None, bytes, Any]]]:
    from common.serde import make_serde
    from connectors.source_lis.hl7_mapping import Hl7Mapper
    from connectors.source_lis.hl7_parser import parse_oru
    from devstack.lis_simulator import Hl7Feed, generate

    settings = _settings(args, lis_mode="hl7-mllp")
    mapper = Hl7Mapper(time_zone="UTC", source="lis", results_topic=settings.results_topic,
                       reports_topic=settings.reports_topic, patients_topic=settings.patients_topic,
                       patient_id_type="MR", patient_id_system=None)
    serde = make_serde(None, True)
    records = []
    for _, text in Hl7Feed(generate(seed=2, reports=args.mllp_reports)).messages():
        message = parse_oru(text)
        for r in mapper.map(message, {"lis": "lis", "sender": message.sender}, {"recent": []}, []):
            records.append((r.topic, r.key, serde.encode(r.topic, r.schema, r.value), r.timestamp_ms))
    return [records[i:i + batch_size] for i in range(0, len(records), batch_size)]


def _bare(args: argparse.Namespace, batches: list[list[tuple[str, str | None, bytes, Any]]]) -> dict[str, Any]:
    from confluent_kafka import Producer

    def produce(producer: Producer, topic: str, key: str | None, value: bytes, timestamp: Any) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value, timestamp=timestamp or 0)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.1)

    records = sum(len(b) for b in batches)
    results = sum(1 for b in batches for r in b if r[0] == args.results)
    kafka = {"bootstrap.servers": args.bootstrap}
    plain = Producer({**kafka, **PRODUCER_SETTINGS})
    for topic in {r[0] for b in batches for r in b}:
        plain.list_topics(topic, timeout=10)  # connected, metadata known: as the worker is after its start
    started = time.perf_counter()
    for batch in batches:
        for record in batch:
            produce(plain, *record)
    assert plain.flush(60) == 0
    plain_s = time.perf_counter() - started

    transactional = Producer({**kafka, **PRODUCER_SETTINGS, "transactional.id": f"bench-bare-{uuid.uuid4().hex}"})
    transactional.init_transactions(60)
    for topic in {r[0] for b in batches for r in b}:
        transactional.list_topics(topic, timeout=10)
    latencies = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        if not batch:
            continue
        begun = time.perf_counter()
        transactional.begin_transaction()
        for record in batch:
            produce(transactional, *record)
        transactional.commit_transaction(60)
        latencies.append(time.perf_counter() - begun)
    tx_s = time.perf_counter() - started
    tx_cpu_s = time.process_time() - cpu_started  # the client's threads (librdkafka's included)
    return {"records": records, "results": results, "plain_s": plain_s, "tx_s": tx_s, "tx_cpu_s": tx_cpu_s,
            "transactions": len(latencies),
            "p50_ms": _percentile(latencies, 0.5) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
            "peak_rss_mb": _peak_rss_mb(), **TIMINGS}


def child_fhir_bare(args: argparse.Namespace) -> dict[str, Any]:
    return _bare(args, _encoded_fhir_batches(args))


def child_mllp_bare(args: argparse.Namespace) -> dict[str, Any]:
    return _bare(args, _encoded_mllp_batches(args, args.batch_size))


def child_mllp_senders(args: argparse.Namespace) -> dict[str, Any]:
    from devstack.lis_simulator import Hl7Feed, generate, send_all

    messages = Hl7Feed(generate(seed=2, reports=args.mllp_reports)).messages()
    started = time.perf_counter()
    acks = send_all("127.0.0.1", args.mllp_port, messages, senders=args.mllp_senders)
    elapsed = time.perf_counter() - started
    return {"messages": len(messages), "elapsed_s": elapsed, "acks": sorted(set(acks.values()))}


# -- orchestration ---------------------------------------------------------------------------------------

def _spawn(mode: str, args: argparse.Namespace, **extra: Any) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--child", mode, "--bootstrap", args.bootstrap]
    for name in ("results", "reports_topic", "patients", "offsets", "dlq", "base_url", "page_size", "mllp_reports",
                 "mllp_senders", "mllp_port", "connector", "task_id", "tasks_max"):
        value = extra.get(name, getattr(args, name))
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    for name, value in extra.items():
        if name == "batch_size":
            argv += ["--batch-size", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen[str], timeout: float = 900) -> dict[str, Any]:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child failed with {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def _create_topics(bootstrap: str, args: argparse.Namespace) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    run = uuid.uuid4().hex[:8]
    args.results, args.reports_topic, args.patients = f"bench-results-{run}", f"bench-reports-{run}", \
        f"bench-patients-{run}"
    args.offsets, args.dlq = f"bench-offsets-{run}", f"bench-dlq-{run}"
    compact = {"cleanup.policy": "compact"}
    topics = [NewTopic(args.results, 6, 1), NewTopic(args.reports_topic, 6, 1),
              NewTopic(args.patients, 6, 1, config=compact), NewTopic(args.offsets, 5, 1, config=compact),
              NewTopic(args.dlq, 1, 1)]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    for future in admin.create_topics(topics).values():
        future.result(30)


def child_simulator(args: argparse.Namespace) -> dict[str, Any]:
    """Serve the FHIR data set (pages pre-rendered) until stdin closes: the LIS on "another host"."""
    from devstack.lis_simulator import FhirSimulator, generate

    simulator = FhirSimulator(max_count=args.page_size)
    base_url = simulator.start()
    simulator.publish(generate(seed=1, reports=args.reports))
    simulator.prerender()
    print(json.dumps({"base_url": base_url}), flush=True)
    sys.stdin.read()
    simulator.stop()
    return {}


def _start_fhir_simulator(args: argparse.Namespace) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, __file__, "--child", "simulator", "--reports", str(args.reports),
                                "--page-size", str(args.page_size)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    args.base_url = json.loads(process.stdout.readline())["base_url"]
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(30)


def _rate(run: dict[str, Any]) -> float:
    return float(run["results"] / run["elapsed_s"])


def _two_rate(runs: list[dict[str, Any]]) -> float:
    return float(sum(r["results"] for r in runs) / (max(r["t_end"] for r in runs) - min(r["t_start"] for r in runs)))


def _bare_rate(run: dict[str, Any]) -> float:
    return float(run["results"] / run["tx_s"])


CHILDREN = {"simulator": child_simulator, "fhir": child_fhir, "fhir-bare": child_fhir_bare, "mllp": child_mllp,
            "mllp-bare": child_mllp_bare, "mllp-senders": child_mllp_senders}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=24_000, help="FHIR reports (~3.4 results each)")
    parser.add_argument("--page-size", type=int, default=1000, help="FHIR _count: records of one transaction")
    parser.add_argument("--mllp-reports", type=int, default=2000, help="report versions sent over MLLP")
    parser.add_argument("--mllp-senders", type=int, default=8, help="concurrent MLLP connections")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--results", "--reports-topic", "--patients", "--offsets", "--dlq", "--base-url"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--mllp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the FHIR modes (medians)")
    parser.add_argument("--skip-mllp", action="store_true", help="FHIR modes only")
    parser.add_argument("--connector", help=argparse.SUPPRESS)
    parser.add_argument("--task-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tasks-max", type=int, default=1, help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    load_before = os.getloadavg()[0]
    broker = None
    args.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not args.bootstrap:
        from devstack.kafka import start_broker

        broker = start_broker()
        args.bootstrap = broker.bootstrap_servers
    simulator = None
    mllp = senders = mllp_bare = None
    rounds: list[dict[str, Any]] = []
    try:
        _create_topics(args.bootstrap, args)
        simulator = _start_fhir_simulator(args)
        for index in range(args.rounds):
            runs: dict[str, Any] = {}
            modes = ["bare", "one", "two"]
            for mode in modes[index % 3:] + modes[:index % 3]:  # rotate: no mode always runs first
                if mode == "one":
                    runs["one"] = _result(_spawn("fhir", args, connector=f"bench-{uuid.uuid4().hex[:8]}"))
                elif mode == "two":
                    name = f"bench-{uuid.uuid4().hex[:8]}"
                    tasks = [_spawn("fhir", args, connector=name, task_id=k, tasks_max=2) for k in (0, 1)]
                    runs["two"] = [_result(task) for task in tasks]
                else:
                    runs["bare"] = _result(_spawn("fhir-bare", args))
            rounds.append(runs)
            print(f"round {index + 1}: " + "; ".join(f"{label} {rate:,.0f} results/s" for label, rate in (
                ("bare transactional", _bare_rate(runs["bare"])), ("one task", _rate(runs["one"])),
                ("two tasks", _two_rate(runs["two"])))), flush=True)
        _stop(simulator)
        simulator = None

        if not args.skip_mllp:
            from devstack.ports import free_port, wait_for_port

            args.mllp_port = free_port()
            worker = _spawn("mllp", args)
            wait_for_port(args.mllp_port, 60)
            senders = _result(_spawn("mllp-senders", args))
            worker.send_signal(signal.SIGTERM)
            mllp = _result(worker, 60)
            mean_batch = max(1, round(mllp["records"] / max(1, mllp["transactions"])))
            mllp_bare = _result(_spawn("mllp-bare", args, batch_size=mean_batch))
    finally:
        if simulator is not None:
            _stop(simulator)
        if broker is not None:
            broker.stop()

    def row(name: str, run: dict[str, Any], seconds: float, transactional: bool) -> tuple[Any, ...]:
        return (name, run["results"], run["records"], run["results"] / seconds, run["records"] / seconds,
                run["transactions"] if transactional else 0, run["p50_ms"] if transactional else None,
                run["p99_ms"] if transactional else None, run["peak_rss_mb"])

    def median_run(key: str, rate: Callable[[Any], float]) -> Any:
        ordered = sorted((r[key] for r in rounds), key=rate)
        return ordered[len(ordered) // 2]

    fhir, fhir_bare = median_run("one", _rate), median_run("bare", _bare_rate)
    two = median_run("two", _two_rate)
    bare_plain = statistics.median(r["bare"]["results"] / r["bare"]["plain_s"] for r in rounds)
    bare_tx, one_rate, two_rate = _bare_rate(fhir_bare), _rate(fhir), _two_rate(two)
    two_row = {"results": sum(t["results"] for t in two), "records": sum(t["records"] for t in two),
               "transactions": sum(t["transactions"] for t in two), "p50_ms": max(t["p50_ms"] for t in two),
               "p99_ms": max(t["p99_ms"] for t in two), "peak_rss_mb": max(t["peak_rss_mb"] for t in two)}
    rows = [
        row("FHIR  source-lis (EOS)", fhir, fhir["elapsed_s"], True),
        row("FHIR  source-lis x2 tasks", two_row, two_row["results"] / two_rate, True),
        row("FHIR  bare producer", fhir_bare, fhir_bare["results"] / bare_plain, False),
        row("FHIR  bare transactional", fhir_bare, fhir_bare["tx_s"], True),
    ]
    if mllp is not None and senders is not None and mllp_bare is not None:
        rows += [
            row("MLLP  source-lis (EOS)", mllp, senders["elapsed_s"], True),
            row("MLLP  bare producer", mllp_bare, mllp_bare["plain_s"], False),
            row("MLLP  bare transactional", mllp_bare, mllp_bare["tx_s"], True),
        ]
    mllp_note = (f"; MLLP {senders['messages']} messages over {args.mllp_senders} connections "
                 f"(ACKs {senders['acks']})") if senders is not None else ""
    print(f"\nbroker {args.bootstrap}; FHIR {args.reports} reports, _count {args.page_size}, medians of "
          f"{args.rounds} interleaved rounds{mllp_note}; load average (1 min) before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    head = f"{'path':26} {'results':>8} {'records':>8} {'results/s':>10} {'records/s':>10} {'tx':>6} " \
           f"{'tx p50 ms':>9} {'tx p99 ms':>9} {'peak MB':>8}"
    print(head)
    print("-" * len(head))
    for name, results, records, rps, recps, tx, p50, p99, rss in rows:
        lat = f"{p50:9.1f} {p99:9.1f}" if p50 is not None else f"{'-':>9} {'-':>9}"
        print(f"{name:26} {results:8d} {records:8d} {rps:10,.0f} {recps:10,.0f} {tx or '-':>6} {lat} {rss:8.0f}")
    print(f"\nsource-lis FHIR, one task: {one_rate / bare_tx:.0%} of the bare transactional producer (goal >= 25%); "
          f"two tasks: {two_rate / one_rate:.2f}x one task (goal >= 1.7x), {two_rate / bare_tx:.0%} of bare "
          f"transactional. Per round: " + ", ".join(
              f"{_rate(r['one']) / _bare_rate(r['bare']):.0%} / {_two_rate(r['two']) / _rate(r['one']):.2f}x"
              for r in rounds))
    one_cpu = statistics.median(r["one"]["results"] / r["one"]["cpu_s"] for r in rounds)
    bare_cpu = statistics.median(r["bare"]["results"] / r["bare"]["tx_cpu_s"] for r in rounds)
    print(f"Per CPU-second of the client process (robust to a busy machine; the broker's CPU is in neither): "
          f"one task {one_cpu:,.0f} results, bare transactional {bare_cpu:,.0f} results: {one_cpu / bare_cpu:.0%}.")
    print(f"FHIR worker (median round): {fhir['elapsed_s']:.1f}s wall; main thread: poll (HTTP + parse + map) "
          f"{fhir['poll_s']:.1f}s, encode + produce {fhir['write_s']:.1f}s, blocked on a commit "
          f"{fhir['wait_s']:.1f}s; commits took {fhir['commit_s']:.1f}s in all (on their thread, overlapping "
          f"the next poll); CPU {fhir['cpu_s']:.1f}s.")
    print(f"Same records without Kafka (fhir-bare preparation): poll {fhir_bare['poll_s']:.1f}s, Avro encode "
          f"{fhir_bare['encode_s']:.1f}s.")
    if mllp is not None:
        print(f"MLLP worker CPU {mllp['cpu_s']:.1f}s; the MLLP rate is results / sender wall time (all ACKed = "
              "all committed).")
    print("Worker clocks start after init_transactions and the offset read. Bare rows exclude polling, mapping "
          "and encoding (done before their clock starts).")
    ceilings = {"FHIR  source-lis (EOS)": "FHIR  bare transactional",
                "FHIR  source-lis x2 tasks": "FHIR  bare transactional",
                "MLLP  source-lis (EOS)": "MLLP  bare transactional",
                "FHIR  bare transactional": "FHIR  bare producer", "MLLP  bare transactional": "MLLP  bare producer"}
    write_rows(args.json, [
        report_row(" ".join(name.split()), recps, peak_rss_mb=rss, p50_ms=p50, p99_ms=p99,
                   ceiling=" ".join(ceilings[name].split()) if name in ceilings else None,
                   latency="transaction" if p50 is not None else None, note=f"{rps:,.0f} results/s")
        for name, results, records, rps, recps, tx, p50, p99, rss in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

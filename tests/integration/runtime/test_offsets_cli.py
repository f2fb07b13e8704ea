"""`labconnect offsets get|reset` against the real broker and real connector processes: a reset
changes where a stopped connector resumes (for billing: the offsets in its own database too),
and is refused while the connector runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from common.serde import SingleObjectSerde
from common._source_worker import read_source_offsets
from connectors.sink_billing import tables as billing_tables
from connectors.sink_billing.audit import charge_counts
from devstack.lis_simulator import FhirSimulator, generate
from tests.integration.conftest import RuntimeEnv
from tests.integration.sink_billing.test_billing_process import LAB_REPORT, report
from tests.support.kafka_helpers import ROOT, committed_offsets, consume_all, produce, wait_for


def _labconnect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def _charged_accessions(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {key.accession for key, counts in charge_counts(engine).items() if counts.charges}
    except sa.exc.OperationalError:  # not migrated yet
        return set()
    finally:
        engine.dispose()


def _stored_offsets(url: str) -> dict[int, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(billing_tables.kafka_offsets.c.kafka_partition,
                                      billing_tables.kafka_offsets.c.next_offset)).all()
    engine.dispose()
    return {row.kafka_partition: row.next_offset for row in rows}


def _restore_empty_backup(url: str) -> None:
    """What an operator sees after restoring the billing database from a backup taken before
    any charge: the rows are gone, the offsets table says where the backup stood."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in (billing_tables.ledger, billing_tables.unpriced_events, billing_tables.charges):
            conn.execute(sa.delete(table))
    engine.dispose()


def test_reset_to_datetime_makes_a_stopped_billing_sink_re_read_from_that_time_and_is_refused_while_it_runs(
        runtime: RuntimeEnv, make_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = make_topic("lab-reports", partitions=3)
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    name = f"billing-{topic}"
    # A static member (group.instance.id) stays in the group after a clean stop until its session
    # times out (6 s here): the reset waits for that instead of refusing.
    own = {"TOPICS": topic, "CONNECTOR_NAME": name, "BILLING_DATABASE_URL": url, "FLUSH_IDLE_MS": "300",
           "KAFKA_GROUP_INSTANCE_ID": f"connect-{name}-0"}
    env = runtime.env(**own)
    before = [(f"P{i % 7}", report(f"OLD{i:04d}", "final", 1, i, patient=i % 7)) for i in range(30)]
    after = [(f"P{i % 7}", report(f"NEW{i:04d}", "final", 1, 100 + i, patient=i % 7)) for i in range(20)]
    produce(runtime.bootstrap, topic, before, schema=LAB_REPORT)
    time.sleep(1.0)
    reset_at = int(time.time() * 1000)
    time.sleep(1.0)  # every record of the second lot is at least this much younger than the reset time
    produce(runtime.bootstrap, topic, after, schema=LAB_REPORT)

    sink = runtime.start_real("sink-billing", "first", **own)
    wait_for(lambda: len(_charged_accessions(url)) == 50, 60, "every report charged")
    refused = _labconnect(env, "offsets", "reset", "sink-billing", "--to-datetime", _iso(reset_at))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{name} is running" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    sink.send_signal(signal.SIGTERM)
    assert sink.wait(30) == 0
    # At once: the stopped static member is still in the group, the reset waits for it to expire.
    planned = _labconnect(env, "offsets", "reset", "sink-billing", "--to-datetime", _iso(reset_at), "--dry-run")
    assert planned.returncode == 0 and "would move 3 partitions" in planned.stdout, planned.stderr

    shown = _labconnect(env, "offsets", "get", "sink-billing", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["partitions"]
    assert sum(row["store"] for row in rows) == 50 and sum(row["end"] for row in rows) == 50
    assert all(row["lag"] == 0 for row in rows)
    assert committed_offsets(runtime.bootstrap, f"connect-{name}", topic) == {r["partition"]: r["group"] for r in rows}

    _restore_empty_backup(url)
    moved = _labconnect(env, "offsets", "reset", "sink-billing", "--to-datetime", _iso(reset_at))
    assert moved.returncode == 0, moved.stderr
    assert "moved 3 partitions" in moved.stdout and "stored offsets" in moved.stdout
    positions = {int(line.split("[")[1].split("]")[0]): int(line.rsplit(" ", 1)[1])
                 for line in moved.stdout.splitlines() if line.startswith(f"{topic}[")}
    assert sum(positions.values()) == 30, "each partition at its first record of the second lot"
    assert committed_offsets(runtime.bootstrap, f"connect-{name}", topic) == positions
    assert _stored_offsets(url) == positions

    runtime.start_real("sink-billing", "second", **own)
    wait_for(lambda: len(_charged_accessions(url)) >= 20, 60, "the second lot charged again")
    time.sleep(2.0)  # anything older would have been read first: nothing more may come
    assert _charged_accessions(url) == {value["accession"] for _, value in after}


def _fhir_env(sim: FhirSimulator, topics: dict[str, str], name: str) -> dict[str, str]:
    return {"CONNECTOR_NAME": name, "LIS_MODE": "fhir", "FHIR_BASE_URL": sim.base_url, "FHIR_PAGE_SIZE": "40",
            "FHIR_POLL_INTERVAL_MS": "200", "FHIR_TIMEOUT_S": "5", "FHIR_OVERLAP_SECONDS": "0",
            "ERRORS_RETRY_DELAY_MAX_MS": "500", **topics}


def _report_ids(bootstrap: str, topic: str) -> Counter[str]:
    serde = SingleObjectSerde()
    return Counter(serde.decode(m.value())[0]["accession"] for m in consume_all(bootstrap, topic, timeout=10))


def test_source_reset_moves_the_fhir_cursor_and_the_restarted_source_re_reads_from_that_time(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    topics = {"RESULTS_TOPIC": make_topic("lab-results", partitions=2),
              "REPORTS_TOPIC": make_topic("lab-reports", partitions=2),
              "PATIENTS_TOPIC": make_topic("patients", config={"cleanup.policy": "compact"})}
    sim = FhirSimulator(max_count=100)
    sim.start()
    try:
        versions = generate(seed=5, reports=60, preliminary_share=0, correction_share=0, cancel_share=0)
        sim.publish(versions)
        newest = max(v.updated_ms for v in versions)
        name = f"source-lis-{uuid.uuid4().hex[:8]}"
        own = _fhir_env(sim, topics, name)
        env = runtime.env(**own)

        source = runtime.start_real("source-lis", "first", **own)
        kafka = {"bootstrap.servers": runtime.bootstrap}
        wait_for(lambda: any(o.get("last_updated") == newest
                             for o in read_source_offsets(kafka, runtime.offsets, name, timeout=10).values()),
                 60, "the cursor at the newest report")
        refused = _labconnect(env, "offsets", "reset", "source-lis", "--to-earliest")
        assert refused.returncode == 1 and f"{name} is running" in refused.stderr, refused.stderr
        source.send_signal(signal.SIGTERM)
        assert source.wait(30) == 0
        first = _report_ids(runtime.bootstrap, topics["REPORTS_TOPIC"])
        assert sum(first.values()) == 60

        shown = _labconnect(env, "offsets", "get", "source-lis")
        assert shown.returncode == 0 and f"lastUpdated cursor {_iso(newest)}" in shown.stdout, shown.stdout
        reset_at = sorted(v.updated_ms for v in versions)[40]
        again = {v.accession for v in versions if v.updated_ms >= reset_at}
        moved = _labconnect(env, "offsets", "reset", "source-lis", "--to-datetime", _iso(reset_at))
        assert moved.returncode == 0, moved.stderr
        assert f"lastUpdated cursor {_iso(reset_at)}" in moved.stdout
        stored = read_source_offsets(kafka, runtime.offsets, name, timeout=10)
        assert [o["last_updated"] for o in stored.values()] == [reset_at]

        runtime.start_real("source-lis", "second", **own)
        wait_for(lambda: sum(_report_ids(runtime.bootstrap, topics["REPORTS_TOPIC"]).values()) >= 60 + len(again),
                 60, "the reports from the reset time read again")
        time.sleep(1.5)
        reread = _report_ids(runtime.bootstrap, topics["REPORTS_TOPIC"]) - first
        assert set(reread) == again and sum(reread.values()) == len(again)
    finally:
        sim.stop()

"""sink-billing as a real process against the real broker, on PostgreSQL and SQLite:
SIGKILLs at the dangerous moments, a full replay, a database outage, a poison record."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sink_billing.audit import charge_counts, table_snapshot
from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import committed_offsets, consume_all, produce, wait_for

LAB_REPORT = "com.drdangslab.events.LabReport"
JAN_2026_MS = 1_767_225_600_000
PRICED = ("2345-7", "718-7", "58410-2")


def report(accession: str, status: str, version: int, n: int, test_code: str = "2345-7",
           patient: int = 0) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lis|{accession}|{status}|{version}")),
        "event_type": "REPORT_" + status.upper().replace("-", "_"), "timestamp": JAN_2026_MS + n, "version": version,
        "patient_id": f"P{patient:04d}", "accession": accession, "test_code": test_code, "test_name": "Test",
        "report_status": status, "result_count": 1, "critical": False, "ordering_provider_id": None,
        "observed_time": None, "source_system": "lis", "source_message_id": f"MSG-{accession}-{version}",
        "metadata": {},
    }


def report_stream(reports: int) -> list[tuple[str, dict[str, Any]]]:
    """Every accession goes preliminary → final; every 10th is then corrected and cancelled."""
    events: list[tuple[str, dict[str, Any]]] = []
    n = 0
    for i in range(reports):
        accession, code = f"ACC{i:06d}", PRICED[i % len(PRICED)]
        lifecycle = ["preliminary", "final"] + (["corrected", "cancelled"] if i % 10 == 0 else [])
        for version, status in enumerate(lifecycle, start=1):
            value = report(accession, status, version, n, code, patient=i % 17)  # keyed by patient: in order
            events.append((value["patient_id"], value))
            n += 1
    return events


def expected(reports: int) -> tuple[int, int]:
    """(charges, reversals)"""
    return reports, len([i for i in range(reports) if i % 10 == 0])


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'billing.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    name = f"billing_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    yield server_url.rsplit("/", 1)[0] + f"/{name}"


def _totals(url: str) -> tuple[int, int, bool]:
    engine = sa.create_engine(url)
    try:
        counts = charge_counts(engine)
    except sa.exc.OperationalError:
        return 0, 0, True
    except sa.exc.ProgrammingError:
        return 0, 0, True
    finally:
        engine.dispose()
    return (sum(c.charges for c in counts.values()), sum(c.reversals for c in counts.values()),
            all(c.exactly_once for c in counts.values()))


def _env(topic: str, url: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"TOPICS": topic, "CONNECTOR_NAME": name, "BILLING_DATABASE_URL": url, "FLUSH_IDLE_MS": 500, **extra}


def _restart_and_check_exactly_once(runtime: RuntimeEnv, topic: str, database_url: str, name: str,
                                    reports: int) -> None:
    """After a kill mid-stream: some but not all charges written; a restarted task completes
    them, each exactly once."""
    charges_before, _, _ = _totals(database_url)
    assert 0 < charges_before < reports

    runtime.start_real("sink-billing", "second", **_env(topic, database_url, name, FLUSH_MAX_RECORDS=250))
    wait_for(lambda: _totals(database_url)[:2] == expected(reports), 90, "every charge and reversal")
    time.sleep(1.5)
    charges, reversals, exactly_once = _totals(database_url)
    assert (charges, reversals) == expected(reports) and exactly_once


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sigkill_between_a_commit_and_the_next_flush_with_a_warm_state_cache_bills_exactly_once(
        runtime: RuntimeEnv, make_topic: Callable[..., str], database_url: str) -> None:
    """Three batches committed (the first cold, two folded on the charge states kept in memory, whose
    offsets the consumer group has not all seen), killed as the fourth flush begins."""
    topic = make_topic("lab-reports", partitions=3)
    reports = 400
    produce(runtime.bootstrap, topic, report_stream(reports), schema=LAB_REPORT)
    name = f"billing-{topic}"
    crashing = runtime.start_real("sink-billing", "first", CRASH_BEFORE_FLUSH=4,
                                  **_env(topic, database_url, name, FLUSH_MAX_RECORDS=100))
    assert crashing.wait(90) == -signal.SIGKILL  # exit 3: the cache was cold at the kill
    _restart_and_check_exactly_once(runtime, topic, database_url, name, reports)


@pytest.mark.parametrize("crash_point", ["CRASH_AFTER_FLUSHES", "CRASH_BEFORE_DB_COMMIT"])
def test_sigkill_around_the_database_commit_leaves_every_charge_exactly_once(
        runtime: RuntimeEnv, make_topic: Callable[..., str], database_url: str, crash_point: str) -> None:
    topic = make_topic("lab-reports", partitions=3)
    reports = 400
    produce(runtime.bootstrap, topic, report_stream(reports), schema=LAB_REPORT)
    name = f"billing-{topic}"
    # Crash inside the 3rd database transaction (1: migration, 2: first batch) or after the 2nd flush.
    crashing = runtime.start_real("sink-billing", "first", **{crash_point: 2 if crash_point.endswith("FLUSHES") else 3},
                                  **_env(topic, database_url, name, FLUSH_MAX_RECORDS=300))
    assert crashing.wait(90) == -signal.SIGKILL
    _restart_and_check_exactly_once(runtime, topic, database_url, name, reports)


def test_replay_of_the_whole_topic_changes_no_row(
        runtime: RuntimeEnv, make_topic: Callable[..., str], postgres_url: str, database_url: str) -> None:
    topic = make_topic("lab-reports", partitions=3)
    reports = 200
    produce(runtime.bootstrap, topic, report_stream(reports), schema=LAB_REPORT)
    first = runtime.start_real("sink-billing", "first", **_env(topic, database_url, f"billing-{topic}"))
    wait_for(lambda: _totals(database_url)[:2] == expected(reports), 60, "first pass")
    time.sleep(1.5)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    engine = sa.create_engine(database_url)
    before = table_snapshot(engine)
    with engine.begin() as conn:  # offsets reset to earliest: in the database and in a fresh group
        conn.execute(sa.text("DELETE FROM billing_kafka_offsets"))
    replay = runtime.start_real("sink-billing", "replay", **_env(topic, database_url, f"replay-{topic}"))
    wait_for(lambda: sum(committed_offsets(runtime.bootstrap, f"connect-replay-{topic}", topic).values())
             >= len(report_stream(reports)), 60, "replay consumed everything")
    replay.send_signal(signal.SIGTERM)
    assert replay.wait(30) == 0
    after = table_snapshot(engine)
    engine.dispose()
    assert after["billing_charges"] == before["billing_charges"]
    assert after["billing_ledger"] == before["billing_ledger"]
    assert after["billing_unpriced_events"] == before["billing_unpriced_events"]


def test_postgres_stopped_for_30_seconds_mid_stream_loses_nothing(
        runtime: RuntimeEnv, make_topic: Callable[..., str]) -> None:
    from devstack.postgres import start_postgres

    server = start_postgres()  # its own server: the outage must not hit other tests
    try:
        topic = make_topic("lab-reports", partitions=3)
        name = f"outage-{topic}"
        url = server.url
        runtime.start_real("sink-billing", "sink", STATUS_PORT=0, ERRORS_RETRY_TIMEOUT_MS=-1,
                           ERRORS_RETRY_DELAY_MAX_MS=2000, **_env(topic, url, name, FLUSH_MAX_RECORDS=100))
        events = report_stream(600)
        produce(runtime.bootstrap, topic, events[:300], schema=LAB_REPORT)
        wait_for(lambda: _totals(url)[0] > 0, 60, "first charges")
        server.pg_ctl("stop")
        produce(runtime.bootstrap, topic, events[300:], schema=LAB_REPORT)
        time.sleep(30)
        assert "retrying put/flush" in runtime.log("sink") or "retrying" in runtime.log("sink")
        server.pg_ctl("start")
        wait_for(lambda: _totals(url)[:2] == expected(_reports_in(events)), 120, "everything after the outage")
        charges, reversals, exactly_once = _totals(url)
        assert exactly_once
    finally:
        server.stop()


def _reports_in(events: list[tuple[str, dict[str, Any]]]) -> int:
    return len({value["accession"] for _, value in events})


def test_poison_record_goes_to_the_dlq_while_its_batch_mates_commit(
        runtime: RuntimeEnv, make_topic: Callable[..., str], database_url: str) -> None:
    topic = make_topic("lab-reports")
    events = report_stream(50)
    if database_url.startswith("postgresql"):
        poison = report("X" * 200, "final", 1, 999)  # violates the accession column's length
    else:
        poison = report("XXXX-unknown", "bogus-status", 1, 999)  # not a usable LabReport
    events.insert(37, (poison["patient_id"], poison))
    produce(runtime.bootstrap, topic, events, schema=LAB_REPORT)
    runtime.start_real("sink-billing", "sink", **_env(topic, database_url, f"poison-{topic}"))
    wait_for(lambda: _totals(database_url)[:2] == expected(50), 60, "the good records")
    dead = consume_all(runtime.bootstrap, runtime.dlq, expect=1)
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert headers["__connect.errors.offset"] == b"37"
    assert headers["__connect.errors.stage"] == b"TASK_PUT"
    assert b"XXXX" not in headers["__connect.errors.exception.message"]

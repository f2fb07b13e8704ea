"""`labconnect replay source-lis` through the real source runtime and broker: same event ids,
the replay header, a bounded run that ends by itself, and a re-run that resumes (adds nothing)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from common.serde import SingleObjectSerde
from connectors.source_lis.fhir_client import format_instant
from connectors.source_lis.replay import main as replay_main
from devstack.lis_simulator import FhirSimulator, generate
from tests.support.kafka_helpers import consume_all


@pytest.fixture
def server() -> Iterator[FhirSimulator]:
    sim = FhirSimulator()
    sim.start()
    yield sim
    sim.stop()


def _run_replay(argv: list[str]) -> int:
    # In a thread: run_connector installs signal handlers only on the main thread.
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(replay_main(argv)))
    thread.start()
    thread.join(120)
    assert result, "replay did not finish"
    return result[0]


def test_fhir_replay_writes_the_window_once_with_the_replay_header(
        server: FhirSimulator, kafka_bootstrap: str, make_topic: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    versions = generate(seed=31, reports=60, preliminary_share=0.3)
    server.publish(versions)
    topics = {name: make_topic(name, partitions=2) for name in ("results", "reports", "patients")}
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LIS_MODE": "fhir", "FHIR_BASE_URL": server.base_url,
        "FHIR_PAGE_SIZE": "25", "RESULTS_TOPIC": topics["results"], "REPORTS_TOPIC": topics["reports"],
        "PATIENTS_TOPIC": topics["patients"], "RESTART_ON_FAILURE": "false",
        "OFFSET_STORAGE_TOPIC": make_topic("offsets", config={"cleanup.policy": "compact"}),
        "STATUS_TOPIC": make_topic("status", config={"cleanup.policy": "compact"}),
        "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": make_topic("dlq"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["--since", format_instant(versions[0].updated_ms - 1000),
            "--until", format_instant(versions[-1].updated_ms + 1000)]
    assert _run_replay(argv) == 0

    serde = SingleObjectSerde()
    produced = []
    for topic in (topics["results"], topics["reports"]):
        for message in consume_all(kafka_bootstrap, topic):
            assert ("replay", b"true") in (message.headers() or [])
            value = serde.decode(message.value())[0]
            assert message.key().decode() == value["patient_id"]
            produced.append(value["event_id"])
    assert sorted(produced) == sorted(server.expected_event_ids())
    assert consume_all(kafka_bootstrap, topics["patients"])

    assert _run_replay(argv) == 0  # same window again: resumes at its end, writes nothing new
    again = sum(len(consume_all(kafka_bootstrap, t)) for t in (topics["results"], topics["reports"]))
    assert again == len(produced)

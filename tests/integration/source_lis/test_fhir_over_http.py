"""The FHIR mode against the simulator over real HTTP, with its fault switches."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from common.errors import RetriableError
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask
from devstack.lis_simulator import FhirSimulator, generate
from tests.unit.source_lis.fake_runtime import FakeRuntime


@pytest.fixture
def server() -> Iterator[FhirSimulator]:
    sim = FhirSimulator(max_count=50, token="test-token")
    sim.start()
    yield sim
    sim.stop()


def _task(sim: FhirSimulator, **overrides: object) -> LisSourceTask:
    values: dict = dict(lis_mode="fhir", fhir_base_url=sim.base_url, fhir_auth_token="test-token",
                        fhir_page_size=200, fhir_poll_interval_ms=0, fhir_overlap_seconds=120, fhir_timeout_s=2)
    values.update(overrides)
    return LisSourceTask(LisSettings(**values))


def _run(runtime: FakeRuntime, polls: int) -> int:
    """Poll like the runtime does: a RetriableError means back off and poll again."""
    retries = 0
    for _ in range(polls):
        try:
            batch = runtime.step()
        except RetriableError:
            retries += 1
            continue
        if not batch and not runtime.task.source.poller.in_traversal:  # type: ignore[attr-defined]
            return retries
    raise AssertionError("did not finish")


def test_every_version_exactly_once_through_faults_late_updates_and_a_restart(server: FhirSimulator) -> None:
    versions = generate(seed=11, reports=600)
    server.publish(versions[:300])
    first = FakeRuntime(_task(server)).start()
    server.faults.fail_next, server.faults.drop_next, server.faults.truncate_next = 2, 1, 1
    server.faults.throttle_next = 1
    for _ in range(3):  # some pages, then the process dies
        try:
            first.step()
        except RetriableError:
            pass
    first.task.stop()
    server.publish(versions[300:])
    second = FakeRuntime(_task(server), offsets=first.offsets).start()
    retries = _run(second, 500)
    late = [server.late_update(v.id, lag_ms=30_000) for v in versions[550:555]]
    server.faults.expire_cursors = True  # and the server now forgets its paging state
    _run(second, 500)
    counts = Counter(first.event_ids() + second.event_ids())
    # Nothing lost (every current version, late ones included), nothing repeated, nothing invented;
    # versions replaced before any poll could see them are legitimately absent.
    assert server.expected_event_ids() <= set(counts)
    assert set(counts) <= server.expected_event_ids(history=True)
    assert max(counts.values()) == 1
    assert retries >= 1 and len(late) == 5


def test_slow_pages_time_out_as_retriable(server: FhirSimulator) -> None:
    server.publish(generate(seed=12, reports=5))
    server.faults.page_delay_s = 1.5
    runtime = FakeRuntime(_task(server, fhir_timeout_s=0.5)).start()
    with pytest.raises(RetriableError):
        runtime.step()
    server.faults.page_delay_s = 0
    time.sleep(1.5)
    _run(runtime, 50)
    assert set(runtime.event_ids()) == server.expected_event_ids()


def test_unreachable_lis_is_retriable(server: FhirSimulator) -> None:
    from devstack.ports import free_port

    runtime = FakeRuntime(_task(server, fhir_base_url=f"http://127.0.0.1:{free_port()}/fhir")).start()
    with pytest.raises(RetriableError):
        runtime.step()

"""The FHIR cursor: equal timestamps, late commits, restarts mid-traversal, aborted batches."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from common.errors import PermanentError, RetriableError
from connectors.source_lis.fhir_client import FhirCursor
from devstack.lis_simulator import generate
from tests.unit.source_lis.conftest import drain
from tests.unit.source_lis.fake_runtime import FakeRuntime

T0 = 1_767_225_600_000


def _reports(n: int, same_ts: bool = False, seed: int = 3) -> list:
    versions = [v for v in generate(seed=seed, reports=n, preliminary_share=0, correction_share=0, cancel_share=0)]
    return [replace(v, updated_ms=T0 if same_ts else T0 + i * 1000) for i, v in enumerate(versions)]


def _assert_exactly_once(runtime: FakeRuntime, sim) -> None:  # type: ignore[no-untyped-def]
    counts = Counter(runtime.event_ids())
    assert set(counts) == sim.expected_event_ids(history=True)
    assert max(counts.values()) == 1


def test_reports_sharing_one_last_updated_across_pages_are_read_once(sim, fhir_task) -> None:
    sim.publish(_reports(23, same_ts=True))
    runtime = FakeRuntime(fhir_task(fhir_page_size=4)).start()
    drain(runtime)
    drain(runtime)  # a second traversal re-reads the overlap: nothing repeats
    _assert_exactly_once(runtime, sim)


def test_late_committed_update_with_older_last_updated_is_found(sim, fhir_task) -> None:
    sim.publish(_reports(10))
    runtime = FakeRuntime(fhir_task(fhir_overlap_seconds=60)).start()
    drain(runtime)
    late = sim.late_update("dr-2", lag_ms=5_000)  # committed now, stamped 5 s before the newest
    drain(runtime)
    _assert_exactly_once(runtime, sim)
    amended = [r for r in runtime.records if r.topic == "lab-reports" and r.value["accession"] == late.accession]
    assert [r.value["report_status"] for r in amended] == ["final", "amended"]


def test_restart_mid_traversal_resumes_from_the_committed_page(sim, fhir_task) -> None:
    sim.publish(_reports(30))
    first = FakeRuntime(fhir_task(fhir_page_size=4)).start()
    for _ in range(3):
        first.step()
    first.step(abort=True)  # killed while writing page 4: that page was never committed
    second = FakeRuntime(fhir_task(fhir_page_size=4), offsets=first.offsets).start()
    drain(second)
    counts = Counter(first.event_ids() + second.event_ids())
    assert set(counts) == sim.expected_event_ids()
    assert max(counts.values()) == 1


def test_aborted_batch_is_read_again_by_the_same_task(sim, fhir_task) -> None:
    sim.publish(_reports(12))
    runtime = FakeRuntime(fhir_task(fhir_page_size=5)).start()
    runtime.step()
    runtime.step(abort=True)
    drain(runtime)
    _assert_exactly_once(runtime, sim)


def test_seen_set_holds_only_the_overlap_window(sim, fhir_task) -> None:
    sim.publish(_reports(200))  # one report per second
    runtime = FakeRuntime(fhir_task(fhir_page_size=50, fhir_overlap_seconds=10)).start()
    drain(runtime)
    offset = next(iter(runtime.offsets.values()))
    assert 10 <= len(offset["seen"]) <= 12
    assert offset["last_updated"] == T0 + 199_000


def test_new_version_of_a_report_is_emitted_again(sim, fhir_task) -> None:
    versions = _reports(5)
    sim.publish(versions)
    runtime = FakeRuntime(fhir_task()).start()
    drain(runtime)
    sim.publish(replace(versions[0], version=2, status="corrected", updated_ms=T0 + 10_000))
    drain(runtime)
    _assert_exactly_once(runtime, sim)
    assert len(runtime.event_ids(("lab-reports",))) == 6


def test_server_errors_are_retriable_and_nothing_is_skipped(sim, fhir_task) -> None:
    sim.publish(_reports(20))
    runtime = FakeRuntime(fhir_task(fhir_page_size=3)).start()
    sim.faults.fail_next, sim.faults.throttle_next, sim.faults.drop_next, sim.faults.truncate_next = 1, 1, 1, 1
    errors = 0
    for _ in range(100):
        try:
            batch = runtime.step()
        except RetriableError:
            errors += 1
            continue
        if not batch and not runtime.task.source.poller.in_traversal:
            break
    assert errors == 4
    _assert_exactly_once(runtime, sim)


def test_expired_paging_cursor_restarts_the_search_from_our_cursor(sim, fhir_task) -> None:
    sim.publish(_reports(20))
    runtime = FakeRuntime(fhir_task(fhir_page_size=3)).start()
    runtime.step()
    sim.faults.expire_cursors = True
    for _ in range(30):
        runtime.step()
    _assert_exactly_once(runtime, sim)


def test_refused_credentials_fail_permanently(sim, fhir_task) -> None:
    import httpx

    from connectors.source_lis.settings import LisSettings
    from connectors.source_lis.task import LisSourceTask

    settings = LisSettings(lis_mode="fhir", fhir_base_url="http://lis.test/fhir", fhir_auth_token="t0ken")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(401)

    task = LisSourceTask(settings, transport=httpx.MockTransport(handler))
    runtime = FakeRuntime(task).start()
    with pytest.raises(PermanentError) as info:
        runtime.step()
    assert seen == ["Bearer t0ken"]
    assert "t0ken" not in str(info.value)


def test_next_link_to_another_host_is_refused(sim, fhir_task) -> None:
    import httpx

    from connectors.source_lis.settings import LisSettings
    from connectors.source_lis.task import LisSourceTask

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"resourceType": "Bundle", "link": [
            {"relation": "next", "url": "https://evil.example/fhir/DiagnosticReport?p=2"}], "entry": []})

    task = LisSourceTask(LisSettings(lis_mode="fhir", fhir_base_url="http://lis.test/fhir", fhir_auth_token="x"),
                         transport=httpx.MockTransport(handler))
    with pytest.raises(PermanentError):
        FakeRuntime(task).start().step()


def test_search_url_asks_for_sorted_includes_from_overlap_start(sim, fhir_task) -> None:
    task = fhir_task(fhir_overlap_seconds=30, fhir_page_size=250)
    FakeRuntime(task).start()
    task.source.poller.cursor = FhirCursor(high_ms=T0, high_id="x")
    url = task.source.poller.first_url()
    assert "_lastUpdated=ge2025-12-31T23%3A59%3A30.000Z" in url
    for part in ("_sort=_lastUpdated", "_count=250", "_include=DiagnosticReport%3Aresult",
                 "_include=DiagnosticReport%3Asubject"):
        assert part in url

"""TASKS_MAX > 1 in FHIR mode: interleaved lastUpdated windows, one cursor per task."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from common.config import load_settings
from common.errors import ConfigError
from connectors.source_lis.fhir_slices import TimeSlices
from connectors.source_lis.settings import LisSettings
from devstack.lis_simulator import generate
from tests.unit.source_lis.conftest import drain
from tests.unit.source_lis.fake_runtime import FakeRuntime

T0 = 1_767_225_600_000


def _reports(n: int, spacing_ms: int = 1000, seed: int = 5) -> list:
    versions = generate(seed=seed, reports=n, preliminary_share=0, correction_share=0, cancel_share=0)
    return [replace(v, updated_ms=T0 + i * spacing_ms) for i, v in enumerate(versions)]


def test_windows_are_dealt_to_the_slices_in_turn() -> None:
    slices = TimeSlices(1, 3, 10)
    assert [slices.owns(ms) for ms in (0, 9, 10, 19, 20, 30, 40)] == [False, False, True, True, False, False, True]
    assert slices.first_owned_from(12) == 12  # inside an owned window: from there
    assert slices.first_owned_from(20) == 40  # windows 2 and 3 are the others'
    assert slices.first_owned_from(0) == 10
    assert slices.window_end(12) == 20
    with pytest.raises(ValueError):
        TimeSlices(2, 2, 10)


def test_a_task_id_outside_tasks_max_is_a_bad_setting() -> None:
    env = {"LIS_MODE": "fhir", "FHIR_BASE_URL": "http://lis/fhir", "TASKS_MAX": "2", "TASK_ID": "2"}
    with pytest.raises(ConfigError, match="TASK_ID must be below TASKS_MAX"):
        load_settings(LisSettings, env)


def _tasks(fhir_task, count: int, **overrides):  # type: ignore[no-untyped-def]
    return [fhir_task(tasks_max=count, task_id=i, fhir_slice_seconds=10, fhir_page_size=4, **overrides)
            for i in range(count)]


def test_two_tasks_read_every_report_once_between_them_each_with_its_own_cursor(sim, fhir_task) -> None:
    sim.publish(_reports(95))  # 95 s of reports: ten 10 s windows
    offsets: dict = {}
    runtimes = [FakeRuntime(task, offsets).start() for task in _tasks(fhir_task, 2)]
    for runtime in runtimes:
        drain(runtime)
        drain(runtime)  # a second traversal re-reads the overlap: nothing repeats
    counts = Counter(runtimes[0].event_ids() + runtimes[1].event_ids())
    assert set(counts) == sim.expected_event_ids()
    assert max(counts.values()) == 1
    shares = [len(r.event_ids()) for r in runtimes]
    assert min(shares) > 0.4 * sum(shares), f"the windows split the work: {shares}"
    assert len(offsets) == 2 and all('"slice":' in key for key in offsets)
    for runtime, index in zip(runtimes, (0, 1)):
        owned = {r.value["event_id"] for r in runtime.records if r.topic == "lab-reports"}
        expected = {e for v in sim.current.values() if (v.updated_ms // 10_000) % 2 == index
                    for e in _report_ids(sim, v)}
        assert owned == expected


def _report_ids(sim, version) -> set[str]:  # type: ignore[no-untyped-def]
    from connectors.source_lis.events import report_event_id

    return {report_event_id("lis", version.accession, version.status, str(version.version))}


def test_a_late_update_is_read_by_the_task_owning_its_window_only(sim, fhir_task) -> None:
    sim.publish(_reports(60))
    offsets: dict = {}
    runtimes = [FakeRuntime(task, offsets).start() for task in _tasks(fhir_task, 2, fhir_overlap_seconds=60)]
    for runtime in runtimes:
        drain(runtime)
    late = sim.late_update("dr-3", lag_ms=25_000)  # re-dated into an older window
    for runtime in runtimes:
        drain(runtime)
    counts = Counter(runtimes[0].event_ids() + runtimes[1].event_ids())
    assert set(counts) == sim.expected_event_ids(history=True)
    assert max(counts.values()) == 1
    owner = runtimes[(late.updated_ms // 10_000) % 2]
    assert any(r.value["report_status"] == "amended" for r in owner.records if r.topic == "lab-reports")


def test_a_killed_task_resumes_its_own_windows_from_its_committed_page(sim, fhir_task) -> None:
    sim.publish(_reports(80))
    offsets: dict = {}
    first, other = (FakeRuntime(task, offsets).start() for task in _tasks(fhir_task, 2))
    for _ in range(4):
        first.step()
    first.step(abort=True)  # killed while writing a page: that page was never committed
    drain(other)
    restarted = FakeRuntime(_tasks(fhir_task, 2)[0], offsets).start()
    drain(restarted)
    counts = Counter(first.event_ids() + other.event_ids() + restarted.event_ids())
    assert set(counts) == sim.expected_event_ids()
    assert max(counts.values()) == 1


def test_a_first_run_from_the_epoch_skips_the_empty_windows_in_a_few_requests(sim, fhir_task) -> None:
    sim.publish(_reports(30))  # 2026, and FHIR_START_TIME unset: from 1970
    runtime = FakeRuntime(_tasks(fhir_task, 2)[1]).start()
    drain(runtime)
    assert runtime.event_ids()
    assert sim.faults.requests < 40, f"{sim.faults.requests} requests for 30 reports"

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask
from devstack.lis_simulator import FhirSimulator
from tests.unit.source_lis.fake_runtime import FakeRuntime, mock_transport

BASE = "http://lis.test/fhir"


@pytest.fixture
def sim() -> FhirSimulator:
    simulator = FhirSimulator(max_count=1000)
    simulator.base_url = BASE  # served through httpx.MockTransport, no socket
    return simulator


@pytest.fixture
def fhir_task(sim: FhirSimulator) -> Callable[..., LisSourceTask]:
    def make(**overrides: Any) -> LisSourceTask:
        replay = overrides.pop("replay", None)
        values: dict[str, Any] = dict(lis_mode="fhir", fhir_base_url=BASE, fhir_page_size=5,
                                      fhir_poll_interval_ms=0, fhir_overlap_seconds=60)
        values.update(overrides)
        return LisSourceTask(LisSettings(**values), replay=replay, transport=mock_transport(sim))

    return make


def drain(runtime: FakeRuntime, max_polls: int = 1000) -> None:
    """Poll until a traversal ends with nothing new."""
    for _ in range(max_polls):
        batch = runtime.step()
        source = runtime.task.source  # type: ignore[attr-defined]
        if not batch and not source.poller.in_traversal:
            return
    raise AssertionError("did not drain")

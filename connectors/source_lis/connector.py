"""The LIS source: lab results from a LIS (FHIR R4 poll or HL7 v2 over MLLP) into Kafka."""

from __future__ import annotations

from typing import Any

from common import ConnectorSpec
from connectors.source_lis.offsets import offset_rules
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask


def make_task(settings: Any) -> LisSourceTask:
    assert isinstance(settings, LisSettings)
    return LisSourceTask(settings)


def run_replay(argv: list[str]) -> int:
    from connectors.source_lis.replay import main  # the backfill tool's imports only when asked for

    return int(main(argv))


CONNECTOR = ConnectorSpec(
    name="source-lis",
    kind="source",
    settings=LisSettings,
    task_factory=make_task,
    description="Lab results from a LIS (FHIR R4 or HL7 v2 ORU^R01 over MLLP) as LabResult/LabReport/PatientContact",
    source_offsets=offset_rules,
    replay=run_replay,
)

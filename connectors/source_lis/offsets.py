"""What `labconnect offsets reset` means for source-lis's source partitions.

* FHIR (``{"lis", "mode": "fhir"}``, with the task's slice under ``TASKS_MAX``): the offset
  is the ``meta.lastUpdated`` cursor, every task's moved alike.
  ``--to-datetime T`` sets it to T (the next search asks for ``_lastUpdated`` from T less
  ``FHIR_OVERLAP_SECONDS``, and every report version found is published again: the sinks
  skip the event ids they hold); ``--to-latest`` sets it to now (nothing older is read);
  ``--to-earliest`` removes it (the next start reads from ``FHIR_START_TIME``, or everything).
* HL7 sender (``{"lis", "sender"}``, with the task under ``TASKS_MAX``): the offset is the sender's recent control ids, the
  duplicate window. A live MLLP feed has no position to move (senders push); only
  ``--to-earliest`` applies, and forgets the window (a re-sent message is published again).
* HL7 replay (``{"lis", "archive": "hl7"}``): file and byte position in the archive;
  ``--to-earliest`` starts the replay over. A replay's window is chosen by ``--since``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from common import WorkerSettings
from common.offset_reset import ResetTarget, SourceOffsetChange
from connectors.source_lis.fhir_client import FhirCursor
from connectors.source_lis.settings import LisSettings


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


class LisOffsetRules:
    def __init__(self, settings: LisSettings) -> None:
        self.settings = settings

    def known_partitions(self) -> list[dict[str, Any]]:
        if self.settings.lis_mode == "fhir":  # one cursor per task (TASKS_MAX)
            from connectors.source_lis.fhir_source import fhir_partition

            return [fhir_partition(self.settings, task) for task in range(self.settings.tasks_max)]
        return []  # HL7 senders are known once they have sent something

    def describe(self, partition: Mapping[str, Any], offset: Mapping[str, Any]) -> str:
        if partition.get("mode") == "fhir":
            cursor = FhirCursor.from_offset(dict(offset))
            return (f"lastUpdated cursor {_iso(cursor.high_ms)} ({len(cursor.seen)} report versions "
                    "in the overlap window)")
        if "sender" in partition:
            return f"duplicate window of {len(offset.get('recent', []))} control ids"
        if "archive" in partition:
            return f"archive file {offset.get('file')} at byte {offset.get('pos', 0)}"
        return "unknown partition"

    def reset(self, partition: Mapping[str, Any], offset: Mapping[str, Any] | None,
              target: ResetTarget) -> SourceOffsetChange:
        if target.kind == "earliest":
            return SourceOffsetChange(None)
        if partition.get("mode") == "fhir":
            at_ms = target.at_ms if target.kind == "datetime" else int(time.time() * 1000)
            assert at_ms is not None
            return SourceOffsetChange(FhirCursor(high_ms=at_ms).to_offset())
        if "sender" in partition:
            return SourceOffsetChange(None, keep=True, note="an MLLP sender pushes: no position to move "
                                      "(--to-earliest forgets its duplicate window)")
        return SourceOffsetChange(None, keep=True, note="a replay's window is chosen by replay --since "
                                  "(--to-earliest starts it over)")


def offset_rules(settings: WorkerSettings) -> LisOffsetRules:
    assert isinstance(settings, LisSettings)
    return LisOffsetRules(settings)

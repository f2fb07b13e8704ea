"""What `labconnect offsets reset` does to each of source-lis's source partitions."""

from __future__ import annotations

import time

from common.offset_reset import ResetTarget
from connectors.source_lis.offsets import LisOffsetRules
from connectors.source_lis.settings import LisSettings

FHIR = {"lis": "lis", "mode": "fhir"}
SENDER = {"lis": "lis", "sender": "LAB|MAIN"}
ARCHIVE = {"lis": "lis", "archive": "hl7"}
CURSOR = {"last_updated": 1_767_225_600_000, "id": "r9", "seen": {"r9": ["2", 1_767_225_600_000]}}


def _rules(mode: str = "fhir", **settings: object) -> LisOffsetRules:
    return LisOffsetRules(LisSettings(lis_mode=mode, fhir_base_url="http://lis.test/fhir", **settings))


def test_a_fhir_cursor_moves_to_the_time_to_now_or_is_removed() -> None:
    rules = _rules()
    at = rules.reset(FHIR, CURSOR, ResetTarget("datetime", 1_772_352_000_000))
    assert at.offset == {"last_updated": 1_772_352_000_000, "id": "", "seen": {}} and not at.keep
    before = int(time.time() * 1000)
    latest = rules.reset(FHIR, CURSOR, ResetTarget("latest")).offset
    assert latest is not None and before <= latest["last_updated"] <= int(time.time() * 1000)
    earliest = rules.reset(FHIR, CURSOR, ResetTarget("earliest"))
    assert earliest.offset is None and not earliest.keep
    assert rules.known_partitions() == [FHIR] and _rules("hl7-mllp").known_partitions() == []
    sliced = _rules(tasks_max=2, fhir_slice_seconds=60).known_partitions()
    assert [p["slice"] for p in sliced] == [0, 1] and all(p["mode"] == "fhir" for p in sliced)
    assert rules.reset(sliced[1], CURSOR, ResetTarget("datetime", 5)).offset == {"last_updated": 5, "id": "",
                                                                                "seen": {}}
    assert rules.describe(FHIR, CURSOR) == ("lastUpdated cursor 2026-01-01T00:00:00.000+00:00 "
                                            "(1 report versions in the overlap window)")


def test_hl7_partitions_have_no_position_to_move_and_are_only_forgotten_on_earliest() -> None:
    rules = _rules("hl7-mllp")
    for partition, offset in ((SENDER, {"recent": ["1", "2"]}), (ARCHIVE, {"file": "f", "pos": 10})):
        for target in (ResetTarget("latest"), ResetTarget("datetime", 1)):
            kept = rules.reset(partition, offset, target)
            assert kept.keep and kept.note
        forgotten = rules.reset(partition, offset, ResetTarget("earliest"))
        assert forgotten.offset is None and not forgotten.keep
    assert rules.describe(SENDER, {"recent": ["1", "2"]}) == "duplicate window of 2 control ids"

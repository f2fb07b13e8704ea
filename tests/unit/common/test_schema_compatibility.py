"""Every schema in schemas/ must stay BACKWARD compatible with its previous version in git."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from common.schema_compat import backward_problems

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = sorted((ROOT / "schemas").glob("*.avsc"))
SEED_FIELDS = ["event_id", "event_type", "timestamp", "version", "patient_id", "test_id", "test_name",
               "result_value", "unit", "reference_range", "status", "metadata"]


def _git(*args: str) -> str | None:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def previous_version(path: Path) -> dict | None:  # type: ignore[type-arg]
    """The committed version if the file has uncommitted changes, else the version
    before the last commit that changed it."""
    relative = str(path.relative_to(ROOT))
    committed = _git("show", f"HEAD:{relative}")
    if committed is not None and json.loads(committed) != json.loads(path.read_text()):
        return json.loads(committed)
    last = (_git("log", "-n", "1", "--format=%H", "--", relative) or "").strip()
    if not last:
        return None
    before = _git("show", f"{last}~1:{relative}")
    return json.loads(before) if before else None


@pytest.mark.parametrize("path", SCHEMAS, ids=[p.name for p in SCHEMAS])
def test_schema_is_backward_compatible_with_its_previous_version_in_git(path: Path) -> None:
    if _git("rev-parse", "HEAD") is None:
        pytest.fail("schemas must be checked against git history; run the tests in a git checkout")
    old = previous_version(path)
    new = json.loads(path.read_text())
    if old is None:
        return  # first version of this schema
    assert backward_problems(old, new) == []


def test_lab_result_keeps_the_seed_fields_in_order() -> None:
    schema = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
    names = [f["name"] for f in schema["fields"]]
    assert names[: len(SEED_FIELDS)] == SEED_FIELDS
    assert schema["namespace"] == "com.drdangslab.events" and schema["name"] == "LabResult"


def test_adding_a_field_without_default_is_caught() -> None:
    old = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
    new = copy.deepcopy(old)
    new["fields"].append({"name": "panel", "type": "string"})
    assert backward_problems(old, new) == ["field panel was added without a default"]


def test_changing_a_field_type_is_caught() -> None:
    old = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
    new = copy.deepcopy(old)
    next(f for f in new["fields"] if f["name"] == "timestamp")["type"] = "string"
    assert backward_problems(old, new)


def test_seed_schema_data_is_readable_with_the_current_schema() -> None:
    current = json.loads((ROOT / "schemas" / "lab_result.avsc").read_text())
    seed = copy.deepcopy(current)
    seed["fields"] = [f for f in seed["fields"] if f["name"] in SEED_FIELDS]
    assert backward_problems(seed, current) == []

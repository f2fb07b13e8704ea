"""The lock files pin, with hashes, versions that satisfy pyproject.toml, and the image and
scripts/bootstrap (CI) install from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.unit


def _pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    text = (ROOT / lock).read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s\\]+)", block)
        if match:
            pins[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in (project["optional-dependencies"][extra] if extra else project["dependencies"])]


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", []), ("requirements-test.lock", ["test"])])
def test_every_declared_dependency_is_pinned_within_its_range_with_hashes(lock: str, extras: list[str]) -> None:
    pins = _pins(lock)
    assert pins and all(hashes >= 1 for _, hashes in pins.values()), "every pin carries a hash"
    for requirement in _declared() + [r for extra in extras for r in _declared(extra)]:
        version, _ = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} pinned at {version}"
    assert "--find-links" not in (ROOT / lock).read_text(), "no machine-local paths"


def test_the_runtime_lock_agrees_with_the_test_lock() -> None:
    runtime, test = _pins("requirements.lock"), _pins("requirements-test.lock")
    assert {name: test.get(name, ("missing",))[0] for name in runtime} == {n: v for n, (v, _) in runtime.items()}


def test_the_image_and_bootstrap_install_from_the_locks() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md requirements.lock" in dockerfile
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "pip install -q --require-hashes -r requirements-test.lock" in bootstrap
    assert "pip install -q --no-deps -e ." in bootstrap
    assert "requirements-test.lock" in bootstrap.split("want=", 1)[1].splitlines()[0], "a new lock reinstalls"

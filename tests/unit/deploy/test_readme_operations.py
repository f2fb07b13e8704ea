"""The README's operations reference names every HTTP endpoint, CLI command, metric and
deployment file the code has: adding one without documenting it fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import common.metrics  # noqa: F401 (registers the runtime metrics)
from common.cli import build_parser, main
from common.connector import REGISTRY as CONNECTORS, load_connector

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.unit


def test_every_metric_is_documented() -> None:
    for connector in CONNECTORS:
        load_connector(connector)  # registers the connectors' own metrics
    families = [f for f in REGISTRY.collect() if f.name.startswith(("labconnect_", "kafka_"))]
    assert len(families) >= 15
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in README, name


def test_every_endpoint_of_the_status_server_is_documented() -> None:
    source = (ROOT / "common" / "control_api.py").read_text()
    paths = set(re.findall(r'path == "(/[a-z]*)"', source))
    paths |= {f"/connectors/<name>/{action}" for action in re.findall(r'f"\{base\}/([a-z]+)"', source)}
    assert {"/health", "/ready", "/metrics", "/connectors/<name>/pause", "/connectors/<name>/status"} <= paths
    for path in paths:
        assert re.search(rf"`(GET|PUT|POST) {re.escape(path)}`", README) or f"`GET /connectors`, `GET {path}`" \
            in README or f", `GET {path}`" in README, path


def test_every_command_and_subcommand_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(subparsers.choices)  # type: ignore[union-attr]
    assert {"run", "migrate", "replay", "status", "dlq", "offsets", "topics", "notify"} <= commands
    for command in commands:
        assert f"`labconnect {command}" in README, command
        if command in {"run", "migrate", "replay"}:
            continue
        with pytest.raises(SystemExit):
            main([command, "--help"])
        usage = capsys.readouterr().out
        actions = {word for group in re.findall(r"\{([a-z,-]+)\}", usage.split("options:")[0])
                   for word in group.split(",")} - set(CONNECTORS)
        actions |= set(re.findall(r"^ {4}([a-z]+) {2,}", usage, re.M))
        for action in actions:
            assert re.search(rf"`labconnect {command} [^`]*\b{action}\b", README), f"{command} {action}"


def test_every_deployment_file_is_documented() -> None:
    files = [*(ROOT / "deploy" / "k8s").glob("*.yaml"), *(ROOT / "deploy" / "grafana").glob("*.json")]
    assert len(files) >= 7
    for path in files:
        assert f"`{path.name}`" in README or f"`deploy/grafana/{path.name}`" in README, path.name
    for script in (ROOT / "scripts").iterdir():
        assert f"`{script.name}`" in README or f"scripts/{script.name}" in README, script.name

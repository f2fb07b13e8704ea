"""deploy/grafana/labconnect.json: every metric it queries exists in the code, every metric
the code exports is charted, and every chart is templated by connector."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import common.metrics
from common.connector import REGISTRY as CONNECTORS, load_connector

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "labconnect.json"
pytestmark = pytest.mark.unit
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _exported() -> dict[str, str]:
    """Sample name -> metric family, for the project's metrics (the connectors' own included)."""
    for connector in CONNECTORS:
        load_connector(connector)
    names = {}
    for family in REGISTRY.collect():
        if family.name.startswith(("labconnect_", "kafka_")):
            for suffix in _SUFFIXES.get(family.type, ("",)):
                names[family.name + suffix] = family.name
    return names


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:labconnect|kafka)_[a-z_]+)\b", expr))


def test_every_queried_metric_exists_and_every_metric_is_charted() -> None:
    exported = _exported()
    queried = {name for panel in _panels() for target in panel["targets"] for name in _queried(target["expr"])}
    assert queried, "the dashboard queries something"
    assert queried <= set(exported), f"not exported by the code: {queried - set(exported)}"
    charted = {exported[name] for name in queried} - {"labconnect_task_info"}
    assert charted == set(exported.values()) - {"labconnect_task_info"}


def test_every_chart_is_templated_by_connector() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "connector"]
    assert _queried(variable["definition"]) <= set(_exported())
    for panel in _panels():
        for target in panel["targets"]:
            assert '{connector=~"$connector"}' in target["expr"] or \
                'labconnect_task_info{connector=~"$connector"}' in target["expr"], panel["title"]


def test_the_connector_join_matches_the_task_info_labels() -> None:
    family = next(f for f in REGISTRY.collect() if f.name == "labconnect_task_info")
    assert "connector" in common.metrics.TASK_INFO._labelnames  # the label the joins group by
    assert family.type == "gauge"

"""deploy/k8s/ parsed and checked against the code: every variable a real setting, the
probes and scrape path real endpoints of the status server, a KEDA ScaledObject per sink."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import common.metrics  # noqa: F401 (registers the metrics the scrape must show)
from common.connector import REGISTRY
from common.control_api import serve_http
from common.status import Control, StatusReporter, TaskState
from devstack.ports import free_port
from tests.support.deploy_files import load_with, unknown_variables

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
pytestmark = pytest.mark.unit


@functools.cache
def _documents() -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.load_all(path.read_text(), Loader=loader)
            if doc]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _workloads() -> dict[str, dict[str, Any]]:
    return {**_by_kind("Deployment"), **_by_kind("StatefulSet")}


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _environment(workload: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (downward API fields as "0")."""
    maps = _by_kind("ConfigMap")
    container = _container(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update({k: str(v) for k, v in maps[source["configMapRef"]["name"]]["data"].items()})
    for var in container.get("env", []):
        env[var["name"]] = str(var.get("value", "0" if "fieldRef" in var.get("valueFrom", {}) else "from-secret"))
    return env


def test_every_connector_has_one_workload_running_it() -> None:
    workloads = _workloads()
    assert set(workloads) == set(REGISTRY)
    for name, workload in workloads.items():
        assert _container(workload)["args"] == ["run", name]
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            workload["spec"]["template"]["metadata"]["labels"].items()


def test_every_variable_is_a_setting_and_the_environment_loads(tmp_path: Path) -> None:
    for name, workload in _workloads().items():
        env = _environment(workload)
        assert not unknown_variables(name, set(env)), f"{name}: not settings: {unknown_variables(name, set(env))}"
        load_with(name, env, tmp_path)  # raises ConfigError naming what is wrong


def test_the_admin_token_and_database_urls_come_from_mounted_secret_files() -> None:
    for name, workload in _workloads().items():
        container = _container(workload)
        env = {var["name"]: var for var in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secret_volumes = {v["name"]: {item["path"] for item in v["secret"]["items"]}
                          for v in workload["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        for var in [v for v in env if v.endswith("_FILE")]:
            directory, _, file = env[var]["value"].rpartition("/")
            assert any(mounts[volume] == directory and file in items for volume, items in secret_volumes.items()), \
                f"{name}: {var} points to no mounted secret"
        assert "ADMIN_TOKEN_FILE" in env and "ADMIN_TOKEN" not in env
        assert not any(v.endswith("DATABASE_URL") for v in _environment(workload)), "a database URL holds a password"


def test_probes_and_scrape_annotations_reach_real_endpoints_on_the_status_port() -> None:
    reporter = StatusReporter("k8s-check", 0, "sink")
    reporter.set(TaskState.RUNNING)
    port = free_port()
    server = serve_http(port, reporter, Control())
    try:
        for name, workload in _workloads().items():
            container = _container(workload)
            env = _environment(workload)
            assert env["STATUS_BIND"] == "0.0.0.0", "the kubelet and Prometheus connect from off the pod"
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["status"] == int(env["STATUS_PORT"])
            assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "status"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "status"}
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == ports["status"]
            for path in ("/health", "/ready", annotations["prometheus.io/path"]):
                assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code != 404, path
        assert "kafka_consumer_lag" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()


def test_each_sink_scales_on_its_own_consumer_group_lag() -> None:
    scaled = _by_kind("ScaledObject")
    sinks = {name for name, workload in _workloads().items() if name.startswith("sink-")}
    assert set(scaled) == sinks
    for name, scaled_object in scaled.items():
        target = scaled_object["spec"]["scaleTargetRef"]
        workload = _workloads()[target["name"]]
        assert target["kind"] == workload["kind"] and target["name"] == name
        (trigger,) = scaled_object["spec"]["triggers"]
        env = _environment(workload)
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == f"connect-{env.get('CONNECTOR_NAME', name)}"
        assert trigger["metadata"]["topic"] in env["TOPICS"].split(",")
        assert trigger["metadata"]["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert int(trigger["metadata"]["lagThreshold"]) > 0


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests

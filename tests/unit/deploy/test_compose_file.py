"""docker-compose.yml parsed and checked against the code and the host's view of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.connector import REGISTRY
from tests.support.deploy_files import load_with, unknown_variables

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.unit


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _connectors() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in _compose()["services"].items()
            if service.get("command", [None])[0] == "run"}


def test_every_connector_runs_with_real_settings_only(tmp_path: Path) -> None:
    services = _connectors()
    assert {service["command"][1] for service in services.values()} == set(REGISTRY)
    for name, service in services.items():
        connector = service["command"][1]
        env = {k: str(v) for k, v in service["environment"].items()}
        assert not unknown_variables(connector, set(env)), f"{name}: {unknown_variables(connector, set(env))}"
        load_with(connector, env, tmp_path)
        for var, value in env.items():
            if var.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in service["secrets"], f"{name}: {var} not mounted"


def test_images_are_pinned_to_a_version() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"


def test_kafka_and_every_status_port_are_published_on_the_host_loopback() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]["environment"]
    (published,) = services["kafka"]["ports"]
    assert re.fullmatch(r"127\.0\.0\.1:\$\{LABCONNECT_KAFKA_PORT:-9092\}:9094", published)
    assert "HOST://localhost:${LABCONNECT_KAFKA_PORT:-9092}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    host_ports = set()
    for name, service in _connectors().items():
        env = service["environment"]
        assert env["STATUS_BIND"] == "0.0.0.0"
        status = [p for p in service["ports"] if p.endswith(f":{env['STATUS_PORT']}")]
        assert len(status) == 1 and status[0].startswith("127.0.0.1:"), f"{name}: status port not published"
        host_ports.add(status[0].split(":")[1])
    assert len(host_ports) == len(_connectors()), "one host port per connector"


def test_the_database_password_comes_from_secret_files_that_agree() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres and postgres["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db-password"
    password = (ROOT / compose["secrets"]["db-password"]["file"]).read_text().strip()
    url = (ROOT / compose["secrets"]["database-url"]["file"]).read_text().strip()
    assert f":{password}@postgres:" in url
    for service in compose["services"].values():
        assert not any(str(v).startswith("postgresql") for v in (service.get("environment") or {}).values())


def test_the_lis_simulator_feeds_source_lis_over_mllp() -> None:
    services = _compose()["services"]
    simulator = services["lis-simulator"]["command"]
    target = simulator[simulator.index("--mllp-target") + 1]
    source = services["source-lis"]["environment"]
    assert target == f"source-lis:{source['MLLP_PORT']}" and source["LIS_MODE"] == "hl7-mllp"
    from devstack.lis_simulator.__main__ import main

    with pytest.raises(SystemExit) as help_exit:  # the simulator accepts these arguments
        main([*simulator[3:], "--help"])
    assert help_exit.value.code == 0

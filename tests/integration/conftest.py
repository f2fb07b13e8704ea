"""Fixtures of the integration tests: per-test runtime topics and connector processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
import subprocess

import pytest

from tests.support.kafka_helpers import start_real_connector, start_test_connector


@dataclass
class RuntimeEnv:
    """Per-test topics for the runtime's own use, and the processes a test started."""

    bootstrap: str
    dlq: str
    offsets: str
    status: str
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **overrides: str | int) -> dict[str, str]:
        base = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "ERRORS_DEADLETTERQUEUE_TOPIC_NAME": self.dlq,
            "OFFSET_STORAGE_TOPIC": self.offsets,
            "STATUS_TOPIC": self.status,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        }
        return {**base, **{k: str(v) for k, v in overrides.items()}}

    def start(self, name: str, log_name: str, **env: str | int) -> subprocess.Popen[bytes]:
        process = start_test_connector(name, self.env(**env), self.tmp / f"{log_name}.log")
        self.processes.append(process)
        return process

    def start_real(self, name: str, log_name: str, **env: str | int) -> subprocess.Popen[bytes]:
        """One of the project's connectors (crash points: tests/support/run_real_connector.py)."""
        process = start_real_connector(name, self.env(**env), self.tmp / f"{log_name}.log")
        self.processes.append(process)
        return process

    def log(self, log_name: str) -> str:
        path = self.tmp / f"{log_name}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def runtime(kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> Iterator[RuntimeEnv]:
    env = RuntimeEnv(
        bootstrap=kafka_bootstrap,
        dlq=make_topic("dlq", config={"retention.ms": "-1"}),
        offsets=make_topic("offsets", partitions=3, config={"cleanup.policy": "compact"}),
        status=make_topic("status", config={"cleanup.policy": "compact"}),
        tmp=tmp_path,
    )
    yield env
    for process in env.processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0

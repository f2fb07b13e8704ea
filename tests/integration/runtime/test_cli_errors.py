"""Mistakes an operator makes exit at once with their code and one line saying what is wrong:
never a traceback, never a task that fails and restarts forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import RuntimeEnv
from tests.support.kafka_helpers import ROOT

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def _labconnect(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})


def _empty_file(tmp_path: Path) -> str:
    path = tmp_path / "empty-secret"
    path.write_text("")
    return str(path)


# (case, arguments, environment ({empty} is an empty file), exit code, text the one line must hold)
CASES = [
    ("empty bootstrap servers", ["run", "sink-billing"], {"KAFKA_BOOTSTRAP_SERVERS": ""}, 2,
     "KAFKA_BOOTSTRAP_SERVERS: must not be empty"),
    ("empty status topic", ["run", "sink-warehouse"], {"STATUS_TOPIC": " "}, 2, "STATUS_TOPIC: must not be empty"),
    ("empty topics", ["run", "sink-billing"], {"TOPICS": ","}, 2, "TOPICS: must name at least one topic"),
    ("empty bootstrap for a tool", ["status"], {"KAFKA_BOOTSTRAP_SERVERS": ""}, 2,
     "KAFKA_BOOTSTRAP_SERVERS: must not be empty"),
    ("empty admin token file", ["run", "sink-billing"], {"ADMIN_TOKEN_FILE": "{empty}"}, 2,
     "ADMIN_TOKEN_FILE: the file"),
    ("empty Kafka secret file", ["dlq", "show"], {"KAFKA_SASL_PASSWORD_FILE": "{empty}"}, 2,
     "KAFKA_SASL_PASSWORD_FILE: the file"),
    ("weak admin token", ["run", "sink-billing"], {"ADMIN_TOKEN": "admin"}, 2, "ADMIN_TOKEN: must be at least 16"),
    ("HL7 replay without an archive", ["replay", "source-lis", "--since", "2026-01-01T00:00:00Z"],
     {"LIS_MODE": "hl7-mllp"}, 2, "HL7_ARCHIVE_DIR"),
    ("HL7 replay of an archive that is not there", ["replay", "source-lis", "--since", "2026-01-01T00:00:00Z"],
     {"LIS_MODE": "hl7-mllp", "HL7_ARCHIVE_DIR": "/nonexistent/archive"}, 2, "HL7_ARCHIVE_DIR"),
    ("replay of a sink", ["replay", "sink-billing"], {}, 2, "only source connectors replay"),
    ("status, broker unreachable", ["status", "--bootstrap", UNREACHABLE], {}, 1, f"cannot reach Kafka at {UNREACHABLE}"),
    ("dlq show, broker unreachable", ["dlq", "show"], {"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE}, 1,
     f"cannot reach Kafka at {UNREACHABLE}"),
    ("dlq redrive, broker unreachable", ["dlq", "redrive", "--bootstrap", UNREACHABLE], {}, 1,
     f"cannot reach Kafka at {UNREACHABLE}"),
    ("topics create, broker unreachable", ["topics", "create", "--bootstrap", UNREACHABLE], {}, 1,
     f"cannot reach Kafka at {UNREACHABLE}"),
    ("dlq list, broker unreachable", ["dlq", "list", "--bootstrap", UNREACHABLE], {}, 1,
     f"cannot reach Kafka at {UNREACHABLE}"),
    ("offsets get, broker unreachable", ["offsets", "get", "sink-warehouse"], {"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE},
     1, f"cannot reach Kafka at {UNREACHABLE}"),
    ("offsets reset of a source, broker unreachable", ["offsets", "reset", "source-lis", "--to-earliest"],
     {"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE, "LIS_MODE": "hl7-mllp"}, 1, f"cannot reach Kafka at {UNREACHABLE}"),
    ("offsets reset to a time without a zone", ["offsets", "reset", "sink-billing", "--to-datetime",
                                                "2026-03-01T08:00"], {}, 2, "--to-datetime: '2026-03-01T08:00' has no"),
    ("offsets reset to a time that is none", ["offsets", "reset", "sink-billing", "--to-datetime", "yesterday"], {}, 2,
     "--to-datetime: 'yesterday' is not an ISO 8601 time"),
    ("offsets of a source missing its settings", ["offsets", "get", "source-lis"], {}, 2, "LIS_MODE"),
]


@pytest.mark.parametrize(("args", "env", "code", "says"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_an_operator_mistake_exits_with_its_code_and_one_line(args: list[str], env: dict[str, str], code: int,
                                                              says: str, tmp_path: Path) -> None:
    env = {name: value.replace("{empty}", _empty_file(tmp_path)) for name, value in env.items()}
    started = time.monotonic()
    result = _labconnect(args, env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert says in lines[0]
    assert time.monotonic() - started < 30, "an unreachable broker is reported without waiting long"


def test_replay_help_shows_help() -> None:
    for args in (["replay", "--help"], ["replay", "-h"]):
        result = _labconnect(args, {})
        assert result.returncode == 0 and result.stderr == ""
        assert "usage: labconnect replay" in result.stdout and "--since" in result.stdout
    detailed = _labconnect(["replay", "source-lis", "--help"], {})
    assert detailed.returncode == 0 and "--until" in detailed.stdout


def test_status_into_a_closed_pipe_ends_quietly(runtime: RuntimeEnv) -> None:
    """`labconnect status --json | head -1`: the reader leaves early; no BrokenPipeError."""
    result = subprocess.run(
        f"{sys.executable} -m common status --json --bootstrap {runtime.bootstrap} --topic {runtime.status} "
        "| head -c 1", shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.stdout == "{" and result.stderr == "", result.stderr
    # A reader that is gone before anything is written: still nothing on stderr.
    process = subprocess.Popen([sys.executable, "-m", "common", "status", "--json", "--bootstrap", runtime.bootstrap,
                                "--topic", runtime.status], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141 and stderr == "", stderr

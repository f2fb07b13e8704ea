"""The short crash drill in CI: the whole pipeline (real broker, PostgreSQL, moto S3, provider
server, LIS simulator, five connector processes) under SIGKILLs and outages, checked from the
stores. ``scripts/drill --duration 15m`` is the long one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_drill_loses_and_duplicates_nothing_across_kills_and_outages(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "devstack.drill", "--duration", "60s", "--settle", "90", "--work", str(tmp_path / "drill")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=400)
    print(result.stdout, result.stderr[-3000:], sep="\n")
    assert result.returncode == 0, "the drill found a loss or a duplicate (table above)"
    out = result.stdout
    kills = int(re.search(r"\(total (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert kills >= 10
    assert "broker SIGKILLed" in out and "broker restarted" in out
    assert "PostgreSQL stopped for 30s" in out and "S3 answered 503" in out and "SMS provider answers 503" in out
    assert int(re.search(r"S3 answered 503 SlowDown for \d+s \((\d+) requests\)", out).group(1)) > 0  # type: ignore[union-attr]
    rows = re.findall(r"^(sink-\w+|dead-letter)\s.*?\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s\s(.*)$", out, re.M)
    assert {r[0] for r in rows} == {"sink-warehouse", "sink-billing", "sink-notify", "dead-letter"}
    for name, expected, stored, lost, duplicated, after_replay in rows:
        assert int(expected) > 0 and (lost, duplicated) == ("0", "0"), name
        if name.startswith("sink-"):
            assert after_replay.startswith("unchanged"), name
    assert "messages to opted-out patients" in out and "0 messages to opted-out patients" in out
    print(f"short drill: {time.monotonic() - started:.0f}s wall")

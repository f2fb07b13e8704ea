"""The rows a benchmark hands to ``bench/run`` (``--json FILE``): one per measured path or ceiling.

A row names the ceiling it is compared with (another row of the same run, by name), so
``bench/run`` can print every figure beside the bare client it competes with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows to FILE (for bench/run)")


def row(name: str, records_per_s: float, *, mb_per_s: float | None = None, peak_rss_mb: float | None = None,
        ceiling: str | None = None, p50_ms: float | None = None, p99_ms: float | None = None,
        latency: str | None = None, note: str = "") -> dict[str, Any]:
    """``latency`` says what p50/p99 time (e.g. "flush+commit", "transaction")."""
    return {"name": name, "records_per_s": records_per_s, "mb_per_s": mb_per_s, "peak_rss_mb": peak_rss_mb,
            "ceiling": ceiling, "p50_ms": p50_ms, "p99_ms": p99_ms, "latency": latency, "note": note}


def write_rows(path: Path | None, rows: list[dict[str, Any]], **extra: Any) -> None:
    if path is not None:
        path.write_text(json.dumps({"rows": rows, **extra}, indent=2))

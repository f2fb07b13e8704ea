"""Retry policy: exponential backoff with full jitter, bounded by a total timeout."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``timeout_ms`` is Kafka Connect's ``errors.retry.timeout`` (-1 = forever, 0 = never)."""

    timeout_ms: int
    max_delay_ms: int = 60_000
    initial_delay_ms: int = 100

    def delays(self) -> Iterator[float]:
        """Seconds to wait before each retry; stops when the timeout would be exceeded."""
        started = time.monotonic()
        attempt = 0
        while True:
            cap = min(self.max_delay_ms, self.initial_delay_ms * (2 ** min(attempt, 30)))
            delay = random.uniform(0, cap) / 1000.0  # full jitter: no retry storms
            if self.timeout_ms >= 0:
                remaining = self.timeout_ms / 1000.0 - (time.monotonic() - started)
                if remaining <= 0:
                    return
                delay = min(delay, remaining)
            attempt += 1
            yield delay

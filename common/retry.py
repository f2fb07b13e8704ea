"""Retry policy: exponential backoff with full jitter, bounded by a total timeout."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from common.errors import TaskFailed, is_retriable, safe_message

T = TypeVar("T")


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


def call_with_retries(operation: Callable[[], T], policy: RetryPolicy, what: str, *,
                      on_retry: Callable[[str, BaseException, float], None],
                      wait: Callable[[float], bool]) -> T | None:
    """Run ``operation``, retrying retriable failures by ``policy``.

    ``on_retry(what, error, delay)`` reports each retry (status, metrics, log);
    ``wait(delay)`` sleeps and returns True if the wait was cut short by a stop, in
    which case None is returned. Permanent failures propagate; exhausted retries
    raise :class:`TaskFailed`.
    """
    delays = policy.delays()
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise TaskFailed(f"{what} still failing after errors.retry.timeout: {safe_message(exc)}") from exc
            on_retry(what, exc, delay)
            if wait(delay):
                return None

"""TokenBucket: the send rate of one provider, shared by every sender on one event loop.

Kept as a virtual schedule (GCRA, the token bucket's exact twin): ``_due`` is when the
bucket would be empty again, one ``interval`` per token handed out; a sender may take a
token once ``_due - slack`` is reached, ``slack`` being the burst beyond the first token.
Senders queue on an ``asyncio.Lock``, which wakes its waiters in arrival order, and only
the head of the queue sleeps. A sender is charged from when it arrived, not from when
the timer actually woke it, so late wake-ups do not add up and the long-run rate is
the configured one.

``penalize(seconds)`` is how a provider's Retry-After reaches every sender at once: no
token is handed out before then, and the schedule restarts with a single token so
senders resume at the rate instead of in a burst that would earn the next 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate_per_s <= 0`` means unlimited; ``burst`` defaults to 1 token (providers count per second)."""

    def __init__(self, rate_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, burst if burst is not None else 1.0)
        self._clock = clock
        self._interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._slack = (self.burst - 1.0) * self._interval
        self._due = clock()  # the bucket starts full
        self._hold_until = float("-inf")
        self._lock = asyncio.Lock()  # binds to the running loop on first contention, not here

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        if self.rate_per_s <= 0:
            while (wait := self._hold_until - self._clock()) > 0:
                await asyncio.sleep(wait)
            return
        arrived = self._clock()
        async with self._lock:
            # Re-checked after every sleep: penalize() may have moved the goal meanwhile.
            while (wait := self._due - self._slack - self._clock()) > 0:
                await asyncio.sleep(wait)
            # Charged from arrival, not from the (late) wake-up: time spent idle before
            # arriving refills the bucket (up to the burst), time spent queued does not.
            self._due = max(self._due, arrived) + self._interval

    def penalize(self, seconds: float) -> None:
        """Hand out no token before now + ``seconds`` (a provider's Retry-After)."""
        until = self._clock() + max(0.0, seconds)
        self._hold_until = max(self._hold_until, until)
        # Exactly one token is due at ``until``; a shorter hold never shortens a longer one.
        self._due = max(self._due, until + self._slack)

"""When a patient may be messaged: quiet hours in the patient's time zone and caps per channel.

Pure functions over epoch milliseconds, so the rules are tested without a clock or a database.
A message that may not go now is deferred to the first moment it may, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No patient message from ``start`` until ``end`` local time (the window may span midnight)."""

    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        return cls(time.fromisoformat(start), time.fromisoformat(end))

    def next_allowed(self, now_ms: int, zone_name: str) -> int:
        """``now_ms`` if a message may go now, else the epoch ms when the quiet window ends."""
        if self.start == self.end:
            return now_ms  # no quiet window
        zone = _zone(zone_name)
        local = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            quiet = self.start <= clock < self.end
            opens_on = local.date()
        else:
            quiet = clock >= self.start or clock < self.end
            opens_on = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not quiet:
            return now_ms
        # Local wall time -> UTC; fold=0 and ZoneInfo resolve a DST gap or overlap deterministically.
        opens = datetime.combine(opens_on, self.end, tzinfo=zone)
        return max(now_ms, int(opens.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class Caps:
    """At most ``per_day`` messages in any 24 hours and ``per_week`` in any 7 days, per patient and channel."""

    per_day: int
    per_week: int

    def next_allowed(self, now_ms: int, sent_at: Sequence[int]) -> int:
        """``now_ms`` if one more may go now, else when the oldest message in a full window leaves it."""
        allowed = now_ms
        for limit, window in ((self.per_day, DAY_MS), (self.per_week, WEEK_MS)):
            inside = sorted(t for t in sent_at if t > now_ms - window)
            if len(inside) >= limit:
                allowed = max(allowed, inside[len(inside) - limit] + window)
        return allowed


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")  # an unknown zone from the LIS must not stop the patient's messages

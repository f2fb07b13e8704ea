"""The bounded window of a replay (backfill) run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ReplayWindow:
    """[since, until) in epoch ms; ``topics`` limits which topics get records (None = all)."""

    since_ms: int
    until_ms: int
    topics: frozenset[str] | None = None
    open_ended: bool = False  # no --until: up to "now" of each run, and re-runs share one cursor

    @classmethod
    def parse(cls, since: str, until: str | None, topics: list[str] | None = None) -> ReplayWindow:
        since_ms = _iso_ms(since)
        until_ms = _iso_ms(until) if until else int(datetime.now(UTC).timestamp() * 1000)
        if until_ms <= since_ms:
            raise ValueError("--until must be after --since")
        return cls(since_ms, until_ms, frozenset(topics) if topics else None, open_ended=not until)

    def connector_name(self, base: str = "source-lis") -> str:
        """A name per window: its cursor (and transactional.id) is separate from the live one's,
        and a re-run of the same window resumes where the last run stopped."""
        def stamp(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")

        suffix = f"{stamp(self.since_ms)}-{'now' if self.open_ended else stamp(self.until_ms)}"
        if self.topics:
            suffix += "-" + re.sub(r"[^A-Za-z0-9._-]", "_", "+".join(sorted(self.topics)))
        return f"{base}-replay-{suffix}"


def _iso_ms(text: str) -> int:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)

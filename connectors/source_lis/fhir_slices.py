"""How the tasks of one FHIR connector share the search: interleaved ``_lastUpdated`` windows.

The time axis is cut into windows of ``FHIR_SLICE_SECONDS``; window ``i`` (counted from the
epoch) belongs to task ``i mod TASKS_MAX``. Each task searches only its own windows
(``_lastUpdated=ge<start>&_lastUpdated=lt<end>``) and keeps only report versions whose
``meta.lastUpdated`` falls in them, so every version is read by exactly one task, and each
task's cursor is its own source partition.

Why ``_lastUpdated``: it is the one range search every FHIR server has for every resource
(R4 ``Resource._lastUpdated``, a date parameter with ``ge``/``lt``), and the poller already
sorts and pages by it. A patient-id hash is not searchable on a FHIR server, and ``_id``
is a token: exact matches only, no ranges.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeSlices:
    """The windows of task ``index`` out of ``count``."""

    index: int
    count: int
    window_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count or self.window_ms <= 0:
            raise ValueError(f"no slice {self.index} of {self.count} with windows of {self.window_ms} ms")

    def owns(self, ms: int) -> bool:
        return (ms // self.window_ms) % self.count == self.index

    def window_end(self, ms: int) -> int:
        """End (exclusive) of the window holding ``ms``."""
        return (ms // self.window_ms + 1) * self.window_ms

    def first_owned_from(self, ms: int) -> int:
        """``ms`` if it is in an owned window, else the start of the next owned window."""
        window = ms // self.window_ms
        ahead = (self.index - window) % self.count
        return ms if ahead == 0 else (window + ahead) * self.window_ms

"""Where a record's file goes: its Hive-style time partition and the object key.

    <prefix>/topic=<topic>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<startOffset:010d>.<ext>
    <prefix>/topic=<topic>/_schemas/<hash>.arrow       (see schema_manifest.py)

The start offset in the name is what makes re-writes overwrite instead of
duplicate (see README, "Exactly once").
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
# Every zone offset in use today is a multiple of 15 minutes, so a 15-minute UTC
# bucket usually falls into one local hour; buckets that do not (historic LMT
# offsets, DST jumps) are computed per record.
_BUCKET_MS = 15 * 60 * 1000


class InvalidEventTime(ValueError):
    """The time field is missing or not an epoch-milliseconds instant."""


def epoch_ms(value: object) -> int:
    """Epoch milliseconds of a ``long`` (epoch ms) or a ``timestamp-millis`` datetime."""
    if isinstance(value, bool):  # bool is an int subclass; a flag is not a time
        raise InvalidEventTime("not a timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // _ONE_MS
    raise InvalidEventTime("missing" if value is None else "not epoch milliseconds")


class TimePartitioner:
    """Maps an event time (epoch ms) to ``dt=YYYY-MM-DD/hour=HH`` in a time zone."""

    # Years 0001..9999 are what datetime can represent; outside is bad data.
    _MIN_MS = -62_135_596_800_000 + 86_400_000
    _MAX_MS = 253_402_300_799_999 - 86_400_000

    def __init__(self, tz: str = "UTC") -> None:
        self.zone = ZoneInfo(tz)
        self._cache: dict[int, str] = {}

    def partition(self, ms: int) -> str:
        bucket = ms // _BUCKET_MS
        cached = self._cache.get(bucket)
        if cached:
            return cached
        if not self._MIN_MS <= ms <= self._MAX_MS:
            raise InvalidEventTime("out of range")
        if cached is None:
            first = self._format(bucket * _BUCKET_MS)
            last = self._format(bucket * _BUCKET_MS + _BUCKET_MS - 1)
            cached = first if first == last else ""  # "": split bucket, compute per record
            if len(self._cache) > 100_000:  # a backfill over decades: keep memory bounded
                self._cache.clear()
            self._cache[bucket] = cached
            if cached:
                return cached
        return self._format(ms)

    def uniform_partition(self, first_ms: int, last_ms: int) -> str | None:
        """The partition of every instant in [first_ms, last_ms] if they all share one, else
        None. Checked bucket by bucket, so zone changes at any minute are respected; spans
        longer than two hours are not checked (None)."""
        first_bucket, last_bucket = first_ms // _BUCKET_MS, last_ms // _BUCKET_MS
        if last_bucket - first_bucket > 8:
            return None
        common = self.partition(first_ms)
        for bucket in range(first_bucket, last_bucket + 1):
            self.partition(bucket * _BUCKET_MS)  # fills the cache entry of the bucket
            if self._cache.get(bucket) != common:  # "" (split) or another partition
                return None
        self.partition(last_ms)  # range check
        return common

    def _format(self, ms: int) -> str:
        local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(self.zone)
        return f"dt={local:%Y-%m-%d}/hour={local:%H}"


def topic_folder(prefix: str, topic: str) -> str:
    """The key prefix of everything stored for ``topic`` (ends with ``/``)."""
    head = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{head}topic={topic}/"


def object_key(prefix: str, topic: str, partition: int, time_partition: str, start_offset: int, ext: str) -> str:
    """The object key of the file that starts at ``start_offset``."""
    return f"{topic_folder(prefix, topic)}{time_partition}/{topic}+{partition}+{start_offset:010d}.{ext}"

"""Epoch milliseconds to an aware UTC datetime, exactly and fast.

Building a ``timedelta`` from an int costs ~450 ns; adding a ready one to a datetime ~60 ns.
So a timestamp is the datetime where its 16,384 ms span starts (cached: the timestamps of a
stream cluster) plus one of 16,384 ready timedeltas (~0.7 MB). Integer arithmetic throughout:
the value is ``EPOCH_UTC + timedelta(milliseconds=ms)`` exactly (what fastavro's
timestamp-millis reader gives), with none of the rounding of ``fromtimestamp(ms / 1000)``.
"""

from __future__ import annotations

import datetime

EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
SPAN_BITS = 14
SPAN_MASK = (1 << SPAN_BITS) - 1
# Public for the generated Avro decoders, which inline the lookup.
MILLIS_IN_SPAN = tuple(datetime.timedelta(milliseconds=n) for n in range(1 << SPAN_BITS))
SPAN_START: dict[int, datetime.datetime] = {}
_SPANS_KEPT = 1 << 16
_ONE_MS = datetime.timedelta(milliseconds=1)


def _span_start(span: int) -> datetime.datetime:
    """The datetime where span ``span`` (``ms >> SPAN_BITS``) starts, now cached."""
    if len(SPAN_START) >= _SPANS_KEPT:
        SPAN_START.clear()
    start = SPAN_START[span] = EPOCH_UTC + _ONE_MS * (span << SPAN_BITS)
    return start


def utc_from_millis(ms: int) -> datetime.datetime:
    """``EPOCH_UTC + timedelta(milliseconds=ms)``; OverflowError outside datetime's years 1-9999."""
    try:
        return (SPAN_START.get(ms >> SPAN_BITS) or _span_start(ms >> SPAN_BITS)) + MILLIS_IN_SPAN[ms & SPAN_MASK]
    except OverflowError:  # the first seconds of year 1: their span starts before it
        return EPOCH_UTC + _ONE_MS * ms

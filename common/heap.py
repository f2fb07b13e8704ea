"""The cyclic garbage collector on a connector's hot path.

Records are acyclic (dicts, tuples, strings, numbers) and freed by reference counting the
moment a batch is done; the cyclic collector finds nothing in them, yet every collection
walks whatever is alive. Two things keep that walk short:

* :func:`freeze_startup_heap`, once the task has started: the modules, compiled codecs and
  settings alive then (hundreds of thousands of objects with SQLAlchemy, pyarrow or boto3
  loaded) move to the permanent generation and are never walked again. The oldest
  generation is then collected every 100th (not 10th) collection of the middle one: the
  collector's other brake on full collections (only once the long-lived objects grew by a
  quarter) no longer works with so few of them, and each full collection walks every batch
  in flight.
* :func:`gc_paused` around a step that allocates a whole batch of objects at once (a parsed
  FHIR page, a round of Parquet rows): no collection walks the half-built batch again and
  again; the one after it finds the batch freed.

Long-lived caches help by holding exact tuples of atomic values, which the collector stops
tracking (a NamedTuple it tracks forever).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_FULL_COLLECTION_EVERY = 100  # collections of the middle generation (CPython's default: 10)


def freeze_startup_heap() -> None:
    """Collect once, then exempt everything alive now from later collections. What an earlier
    start froze is thawed first, so a restarted task's garbage is still collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, _FULL_COLLECTION_EVERY))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block (reference counting still frees everything)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

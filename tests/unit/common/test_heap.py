"""common.heap: the start-up heap leaves the collector's walks; a restart's garbage does not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from common.heap import freeze_startup_heap, gc_paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


class Node:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the collector frees it


def test_what_is_alive_at_start_is_frozen_and_full_collections_are_spaced_out() -> None:
    gc.set_threshold(700, 10, 10)
    freeze_startup_heap()
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (700, 10, 100)


def test_a_restart_thaws_what_the_last_start_froze_so_its_garbage_is_collected() -> None:
    node = Node()
    gone = weakref.ref(node)
    freeze_startup_heap()  # the first start: the node is alive, so frozen
    del node  # the task that held it ended
    freeze_startup_heap()  # the restart
    assert gone() is None


def test_no_collection_inside_gc_paused_and_the_collector_back_after() -> None:
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()  # a collector switched off before stays off

"""FHIR mode of the task: one search page per poll, the cursor as source offset.

Every record of a page carries the cursor as it stands after the page; the
runtime commits the batch and that offset in one transaction. If the batch is
aborted the poller goes back to the last committed cursor, so the page is read
again (the seen set was committed with the page, so nothing repeats either).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from common import DeadLetter, SourceRecord
from common.heap import gc_paused
from connectors.source_lis.fhir_client import FhirCursor, FhirPoller, make_http_client, parse_instant
from connectors.source_lis.fhir_mapping import FhirMapper
from connectors.source_lis.fhir_slices import TimeSlices
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.window import ReplayWindow


def fhir_partition(settings: LisSettings, task_id: int) -> dict[str, Any]:
    """The source partition holding task ``task_id``'s cursor."""
    partition: dict[str, Any] = {"lis": settings.lis_name, "mode": "fhir"}
    if settings.tasks_max > 1:
        partition.update(slice=task_id, slices=settings.tasks_max, slice_seconds=settings.fhir_slice_seconds)
    return partition


class FhirSource:
    def __init__(self, settings: LisSettings, mapper_kwargs: dict[str, Any], replay: ReplayWindow | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.replay = replay
        self.partition = fhir_partition(settings, settings.task_id)
        self.slices: TimeSlices | None = None
        if settings.tasks_max > 1:  # each task its own windows and its own cursor (fhir_slices)
            self.slices = TimeSlices(settings.task_id, settings.tasks_max, settings.fhir_slice_seconds * 1000)
        self.mapper = FhirMapper(partition=self.partition, **mapper_kwargs)
        assert settings.fhir_base_url is not None
        self.client = make_http_client(base_url=settings.fhir_base_url, timeout_s=settings.fhir_timeout_s,
                                       token=settings.fhir_auth_token, username=settings.fhir_username,
                                       password=settings.fhir_password, transport=transport)
        self.poller: FhirPoller | None = None
        self._committed = FhirCursor()
        self._next_search_at = 0.0
        self._finished = False

    def start(self, offset: dict[str, Any] | None) -> None:
        self._committed = FhirCursor.from_offset(offset)
        start_ms, until_ms = 0, None
        if self.replay is not None:
            start_ms, until_ms = self.replay.since_ms, self.replay.until_ms
        elif self.settings.fhir_start_time:
            start_ms = parse_instant(self.settings.fhir_start_time)
        assert self.settings.fhir_base_url is not None
        self.poller = FhirPoller(base_url=self.settings.fhir_base_url, client=self.client,
                                 page_size=self.settings.fhir_page_size,
                                 overlap_ms=int(self.settings.fhir_overlap_seconds * 1000),
                                 cursor=FhirCursor.from_offset(offset), start_ms=start_ms, until_ms=until_ms,
                                 deadline_s=self.settings.fhir_request_deadline_s, slices=self.slices)

    def poll(self) -> Sequence[SourceRecord | DeadLetter]:
        poller = self.poller
        assert poller is not None
        if self._finished:
            return []
        if not poller.in_traversal:
            wait = self._next_search_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 1.0))  # poll() must come back within about a second
                return []
        with gc_paused():  # a page is ~100k fresh acyclic objects: one collection after it, not hundreds
            return self._next_page_records(poller)

    def _next_page_records(self, poller: FhirPoller) -> list[SourceRecord | DeadLetter]:
        # Its own frame so the parsed page is freed (by reference counting) before the
        # collector is switched back on and never has to walk it.
        page = poller.next_page()
        if page.last_page:
            if self.replay is not None:
                self._finished = True
            self._next_search_at = time.monotonic() + self.settings.fhir_poll_interval_ms / 1000
        return self.mapper.map_page(page)

    def on_committed(self, batch: Sequence[SourceRecord | DeadLetter]) -> None:
        for item in reversed(batch):
            if item.source_offset is not None:
                self._committed = FhirCursor.from_offset(item.source_offset)
                return

    def on_aborted(self, batch: Sequence[SourceRecord | DeadLetter], error: BaseException) -> None:
        assert self.poller is not None
        self.poller.rewind(FhirCursor.from_offset(self._committed.to_offset()))
        self.mapper.reset()
        self._finished = False
        self._next_search_at = 0.0

    def done(self) -> bool:
        return self._finished

    def progress(self) -> float | None:
        """Share of the replay window read so far (by lastUpdated), for the progress line."""
        if self.replay is None or self.poller is None:
            return None
        if self._finished:
            return 1.0
        span = self.replay.until_ms - self.replay.since_ms
        high = self.poller.cursor.high_ms
        return 0.0 if span <= 0 or high <= 0 else min(1.0, max(0.0, (high - self.replay.since_ms) / span))

    def stop(self) -> None:
        self.client.close()

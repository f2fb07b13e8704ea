"""A stand-in for common._source_worker in tests: commits batches and offsets in memory.

It does what the runtime promises the task: the last source offset per partition of
a committed batch becomes visible through ``context.offset``; ``on_committed`` or
``on_aborted`` follows every non-empty batch. A "restart" is a new task started
with the same ``offsets`` dict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from common.records import DeadLetter, SourceRecord
from common.task import SourceTask


def _key(partition: dict[str, Any]) -> str:
    return json.dumps(partition, separators=(",", ":"), sort_keys=True)


class FakeContext:
    def __init__(self, offsets: dict[str, dict[str, Any]], connector_name: str = "source-lis") -> None:
        self.connector_name = connector_name
        self.task_id = 0
        self.offsets = offsets

    def offset(self, partition: dict[str, Any]) -> dict[str, Any] | None:
        stored = self.offsets.get(_key(partition))
        return json.loads(json.dumps(stored)) if stored is not None else None  # as read back from Kafka


class FakeRuntime:
    def __init__(self, task: SourceTask, offsets: dict[str, dict[str, Any]] | None = None) -> None:
        self.task = task
        self.offsets: dict[str, dict[str, Any]] = {} if offsets is None else offsets
        self.context = FakeContext(self.offsets)
        self.records: list[SourceRecord] = []
        self.dead: list[DeadLetter] = []
        self.batches = 0

    def start(self) -> FakeRuntime:
        self.task.start(self.context)
        return self

    def step(self, abort: bool = False,
             unserializable: Callable[[SourceRecord], bool] | None = None) -> list[SourceRecord | DeadLetter]:
        """One poll and its commit. ``unserializable`` picks records the runtime fails to
        serialize: they are dead-lettered and reported with ``on_record_failed``."""
        batch = list(self.task.poll())
        if not batch:
            return batch
        if abort:
            self.task.on_aborted(batch, RuntimeError("transaction aborted"))
            return batch
        latest: dict[str, Any] = {}
        for item in batch:
            if isinstance(item, DeadLetter):
                self.dead.append(item)
                continue
            latest[_key(item.source_partition)] = item.source_offset
            if unserializable is not None and unserializable(item):
                self.dead.append(DeadLetter(payload=b"{}", error=ValueError("cannot serialize")))
                self.task.on_record_failed(item, ValueError("cannot serialize"))
            else:
                self.records.append(item)
        # Offsets are written after the records, as the runtime does; JSON round trip as in Kafka.
        for key, offset in latest.items():
            self.offsets[key] = json.loads(json.dumps(offset))
        self.batches += 1
        self.task.on_committed(batch)
        return batch

    def run_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            self.step()

    def event_ids(self, topics: tuple[str, ...] = ("lab-results", "lab-reports")) -> list[str]:
        return [r.value["event_id"] for r in self.records if r.topic in topics and r.value]


def mock_transport(sim: Any) -> Any:
    """An httpx.MockTransport that serves a FhirSimulator's data without sockets."""
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        params = list(request.url.params.multi_items())
        query = dict(params)
        faults = sim.faults
        faults.requests += 1  # as the simulator's HTTP server counts them
        if faults.take("fail_next"):
            return httpx.Response(500)
        if faults.take("throttle_next"):
            return httpx.Response(429, headers={"Retry-After": "1"})
        if faults.take("drop_next"):
            raise httpx.ConnectError("connection reset")
        if "_page" in query:
            ids = sim._pages.get(query["_page"])
            if ids is None or faults.expire_cursors:
                return httpx.Response(410)
            token, start, count = query["_page"], int(query["_offset"]), int(query.get("_count", 100))
        else:
            ids, count = sim.search(params)
            token, start = f"t{len(sim._pages)}", 0
            sim._pages[token] = ids
        body = sim.render_page(ids, token, start, count)
        if faults.take("truncate_next"):
            body = body[: len(body) // 2]
        return httpx.Response(200, content=body)

    return httpx.MockTransport(handler)

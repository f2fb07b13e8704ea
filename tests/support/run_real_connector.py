"""Run one of the project's connectors as a real process, with a crash point chosen
by environment variables, so tests can SIGKILL it at exactly the dangerous moment:

* ``CRASH_AFTER_FLUSHES=N``: right after the task's N-th successful flush (the write
  is durable, the Kafka offset commit has not happened);
* ``CRASH_BEFORE_FLUSH=N``: when the task's N-th flush begins, once every earlier flush is
  durable (a task that commits in the background is let finish first: ``pre_commit(wait=True)``);
  a task that keeps state between batches must have some then (``cached_bill_keys``), or the
  process exits 3 instead of being killed;
* ``CRASH_BEFORE_DB_COMMIT=N``: inside the N-th database transaction, after its
  statements ran and before COMMIT (SQLAlchemy's ``commit`` event);
* ``CRASH_AFTER_UPLOAD_PARTS=N``: in the middle of a multipart upload, after N parts;
* ``CRASH_IN_TRANSACTION=N`` (sources): inside the N-th Kafka transaction, after its
  records and source offsets reached the broker and before ``commit_transaction``.

    python -m tests.support.run_real_connector sink-warehouse
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Any

from common.cli import run_spec
from common.connector import ConnectorSpec, load_connector


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(variable: str) -> Any:
    limit = int(os.environ.get(variable, "0"))
    state = {"n": 0}

    def tick(*_: Any, **__: Any) -> None:
        state["n"] += 1
        if limit and state["n"] >= limit:
            _kill()

    return tick if limit else None


def _crash_in_transaction(limit: int) -> None:
    """SIGKILL the source worker in its ``limit``-th transaction, just before the commit."""
    from common._source_worker import SourceWorker

    original_write, original_produce = SourceWorker._write, SourceWorker._produce
    state = {"transactions": 0}

    def write(self: SourceWorker, batch: Any, context: Any) -> None:
        state["transactions"] += 1
        original_write(self, batch, context)

    def produce(self: SourceWorker, topic: str, kwargs: dict[str, Any]) -> None:
        original_produce(self, topic, kwargs)
        if state["transactions"] == limit and topic == self.settings.offset_storage_topic:
            # The offsets come last in a transaction: the records are produced, the commit is next.
            self.producer.flush(10)
            _kill()

    SourceWorker._write = write  # type: ignore[method-assign]
    SourceWorker._produce = produce  # type: ignore[method-assign]


def _with_crash_points(spec: ConnectorSpec) -> ConnectorSpec:
    if int(os.environ.get("CRASH_IN_TRANSACTION", "0")):
        _crash_in_transaction(int(os.environ["CRASH_IN_TRANSACTION"]))
    after_flush = _countdown("CRASH_AFTER_FLUSHES")
    before_commit = _countdown("CRASH_BEFORE_DB_COMMIT")
    after_part = _countdown("CRASH_AFTER_UPLOAD_PARTS")

    if before_commit is not None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "commit", before_commit)
    if after_part is not None:
        import botocore.client

        original_init = botocore.client.BaseClient.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self.meta.events.register("after-call.s3.UploadPart", after_part)

        botocore.client.BaseClient.__init__ = init  # type: ignore[method-assign]

    before_flush = int(os.environ.get("CRASH_BEFORE_FLUSH", "0"))

    def factory(settings: Any) -> Any:
        task = spec.task_factory(settings)
        if before_flush:
            flush_started = task.flush
            flushes = {"n": 0}

            def flush_or_crash(offsets: Any) -> None:
                flushes["n"] += 1
                if flushes["n"] >= before_flush:
                    task.pre_commit({}, wait=True)
                    if getattr(task, "cached_bill_keys", None) == 0:
                        os._exit(3)  # the test wants the kill while state is held in memory
                    _kill()
                flush_started(offsets)

            task.flush = flush_or_crash
        if after_flush is not None:
            original_flush = task.flush

            def flush(offsets: Any) -> None:
                original_flush(offsets)
                after_flush()

            task.flush = flush
        return task

    return dataclasses.replace(spec, task_factory=factory)


if __name__ == "__main__":
    sys.exit(run_spec(_with_crash_points(load_connector(sys.argv[1]))))

"""Run a test connector as a real process: ``python -m tests.support.run_test_connector NAME``."""

from __future__ import annotations

import os
import signal
import sys

from common.cli import run_spec
from common._source_worker import SourceWorker
from tests.support.test_connectors import COUNTING_SOURCE, RECORDING_SINK

_original_produce = SourceWorker._produce


def _produce_then_maybe_crash(self: SourceWorker, topic: str, kwargs: dict) -> None:  # type: ignore[type-arg]
    _original_produce(self, topic, kwargs)
    if os.environ.get("LABCONNECT_TEST_CRASH_NOW") == "1" and topic == self.settings.offset_storage_topic:
        # The batch's records and offset are on the broker, the transaction is open.
        self.producer.flush(10)
        os.kill(os.getpid(), signal.SIGKILL)


SourceWorker._produce = _produce_then_maybe_crash  # type: ignore[method-assign]


def main() -> int:
    spec = {"recording-sink": RECORDING_SINK, "counting-source": COUNTING_SOURCE}[sys.argv[1]]
    return run_spec(spec)


if __name__ == "__main__":
    sys.exit(main())

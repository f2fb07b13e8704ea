"""LisSourceTask: the LIS source for both input modes, live or as a bounded replay.

``LIS_MODE=fhir`` polls a FHIR R4 server (:mod:`.fhir_source`), ``LIS_MODE=hl7-mllp``
listens for ORU^R01 (:mod:`.hl7_source`). With a :class:`ReplayWindow` the task
re-reads that window (FHIR ``_lastUpdated`` range or the HL7 archive), adds the
header ``replay: true`` to every record, reports progress, and is ``done()`` at the
end of the window. Run under its own connector name, its cursor is its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import httpx

from common import DeadLetter, SourceRecord, SourceTask, SourceTaskContext
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.window import ReplayWindow

Record = SourceRecord | DeadLetter
REPLAY_HEADER = ("replay", b"true")


class ProgressLine:
    """``replayed N records, R/s, P% of the window, ETA ...`` on one stderr line, at most once a second."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.records = 0
        self._last = 0.0

    def update(self, records: int, fraction: float | None, final: bool = False) -> None:
        self.records += records
        now = time.monotonic()
        if not final and now - self._last < self.interval_s:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.records / elapsed
        text = f"replay: {self.records} records, {rate:,.0f}/s"
        if fraction is not None:
            text += f", {fraction * 100:5.1f}% of the window"
            if 0 < fraction < 1:
                text += f", ETA {_duration(elapsed * (1 - fraction) / fraction)}"
        self.stream.write("\r" + text + ("\n" if final else ""))
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class LisSourceTask(SourceTask):
    def __init__(self, settings: LisSettings, replay: ReplayWindow | None = None,
                 transport: httpx.BaseTransport | None = None, progress: ProgressLine | None = None) -> None:
        self.settings = settings
        self.replay = replay
        self.headers = [REPLAY_HEADER] if replay is not None else []
        self.progress = progress if progress is not None else (ProgressLine() if replay is not None else None)
        topic_filter: Callable[[str], bool] | None = None
        if replay is not None and replay.topics:
            topic_filter = replay.topics.__contains__
        mapper_kwargs: dict[str, Any] = dict(
            source=settings.lis_name, results_topic=settings.results_topic, reports_topic=settings.reports_topic,
            patients_topic=settings.patients_topic, patient_id_type=settings.patient_id_type,
            patient_id_system=settings.patient_id_system,
        )
        self.source: Any
        if settings.lis_mode == "fhir":
            from connectors.source_lis.fhir_source import FhirSource

            self.source = FhirSource(settings, {**mapper_kwargs, "headers": self.headers, "topic_filter": topic_filter},
                                     replay, transport)
        else:
            from connectors.source_lis.hl7_source import Hl7Source

            self.source = Hl7Source(settings, {**mapper_kwargs, "topic_filter": topic_filter}, replay, self.headers)

    def start(self, context: SourceTaskContext) -> None:
        super().start(context)
        if self.settings.lis_mode == "fhir":
            self.source.start(context.offset(self.source.partition))
        else:
            self.source.start(context.offset)

    def poll(self) -> Sequence[Record]:
        batch = self.source.poll()
        if self.progress is not None:
            self.progress.update(sum(1 for r in batch if isinstance(r, SourceRecord)), self.source.progress(),
                                 final=self.source.done())
        return batch

    def on_committed(self, batch: Sequence[Record]) -> None:
        self.source.on_committed(batch)

    def on_aborted(self, batch: Sequence[Record], error: BaseException) -> None:
        self.source.on_aborted(batch, error)

    def on_record_failed(self, record: SourceRecord, error: BaseException) -> None:
        failed = getattr(self.source, "on_record_failed", None)
        if failed is not None:
            failed(record, error)

    def done(self) -> bool:
        return bool(self.source.done())

    def wake(self) -> None:
        wake = getattr(self.source, "wake", None)
        if wake is not None:
            wake()

    def stop(self) -> None:
        self.source.stop()



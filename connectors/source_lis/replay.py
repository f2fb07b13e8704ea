"""`labconnect replay source-lis --since ISO [--until ISO] [--topic T ...]`: backfill by replay.

Runs the same :class:`LisSourceTask` in replay mode under its own connector name
(``source-lis-replay-<since>-<until>``): the live connector's cursor is never
touched, both can run at once, and re-running the same window resumes where the
last run stopped. Events get the same ids as the first time plus the header
``replay: true``. FHIR mode re-reads ``_lastUpdated`` in [since, until); HL7 mode
reads the archive (``HL7_ARCHIVE_DIR``) of messages received in the window and
produces no PatientContact records unless ``--topic`` names the patients topic
(archived contact details are historical). Settings come from the same
environment as the live connector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import ConfigError, ConnectorSpec
from connectors.source_lis.settings import LisSettings
from connectors.source_lis.task import LisSourceTask
from connectors.source_lis.window import ReplayWindow

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labconnect replay source-lis",
                                     description="Re-read a time window from the LIS and produce its events again.")
    parser.add_argument("--since", required=True, help="window start, ISO 8601 (UTC when no offset)")
    parser.add_argument("--until", help="window end (exclusive), ISO 8601; default: now")
    parser.add_argument("--topic", action="append", dest="topics", metavar="T",
                        help="only produce to this topic (repeatable); default: all three, "
                             "but HL7 mode writes patient contacts only when this names their topic")
    return parser


def replay_spec(window: ReplayWindow, live_name: str = "source-lis") -> ConnectorSpec:
    """The connector spec of one replay window (same settings, a bounded task), named after
    the live connector so two LIS connectors replaying one window never share a cursor."""

    def factory(settings: Any) -> LisSourceTask:
        assert isinstance(settings, LisSettings)
        return LisSourceTask(settings, replay=window)

    return ConnectorSpec(name=window.connector_name(live_name), kind="source", settings=LisSettings, task_factory=factory,
                         description="bounded replay of the LIS source")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        window = ReplayWindow.parse(args.since, args.until, args.topics)
    except ValueError as exc:
        print(f"labconnect replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from common.config import load_settings
    from common.logs import configure_logging
    from common.worker import run_connector

    try:
        settings = load_settings(LisSettings)
    except ConfigError as error:
        print(f"labconnect: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if window.topics:
        known = {settings.results_topic, settings.reports_topic, settings.patients_topic}
        unknown = sorted(window.topics - known)
        if unknown:
            print(f"labconnect replay: --topic must be one of {sorted(known)}", file=sys.stderr)
            return EXIT_CONFIG
    if settings.lis_mode == "hl7-mllp" and not (settings.hl7_archive_dir and Path(settings.hl7_archive_dir).is_dir()):
        # Would fail the task at every restart (or replay nothing): the archive is the only HL7 history.
        print("labconnect replay: HL7 replay needs HL7_ARCHIVE_DIR, the directory of the archive of received "
              "messages" + (" (not a directory)" if settings.hl7_archive_dir else ""), file=sys.stderr)
        return EXIT_CONFIG
    spec = replay_spec(window, settings.connector_name or "source-lis")
    # Beside the live connector in the same environment: its status port is the live one's.
    settings = settings.model_copy(update={"connector_name": spec.name, "status_port": None})
    configure_logging(settings, spec.name)
    print(f"replaying {settings.lis_mode} window as connector {spec.name}", file=sys.stderr)
    return run_connector(spec, settings, connector_name=spec.name)

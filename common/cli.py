"""`labconnect`: the one entry point for running and operating the connectors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from common.connector import REGISTRY, ConnectorSpec, load_connector
from common.errors import ConfigError, ConnectorError

EXIT_CONFIG = 2


def run_spec(spec: ConnectorSpec, print_config: bool = False) -> int:
    """Load the connector's settings from the environment and run it until stopped."""
    from common.config import load_settings
    from common.logs import configure_logging
    from common.worker import run_connector

    try:
        settings = load_settings(spec.settings)
    except ConfigError as error:
        print(f"labconnect: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if print_config:
        print(json.dumps(settings.redacted(), indent=2, default=str))
        return 0
    configure_logging(settings, settings.connector_name or spec.name)
    return run_connector(spec, settings)


def _cmd_run(args: argparse.Namespace) -> int:
    return run_spec(load_connector(args.connector), args.print_config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from common.config import load_settings

    spec = load_connector(args.connector)
    if spec.migrate is None:
        print(f"{args.connector} has no storage schema to migrate")
        return 0
    spec.migrate(load_settings(spec.settings))
    print(f"{args.connector}: schema is up to date")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    replay = load_connector(args.connector).replay if args.connector in REGISTRY else None
    if replay is None:
        print("replay: only source connectors replay (a sink re-reads a topic when its consumer group is reset)", file=sys.stderr)
        return EXIT_CONFIG
    return int(replay(list(args.rest)))


def _cmd_status(args: argparse.Namespace) -> int:
    from common.status_view import main as status_main

    return status_main(list(args.rest))


def _cmd_dlq(args: argparse.Namespace) -> int:
    from common.dlq_tool import main as dlq_main

    return dlq_main(list(args.rest))


def _cmd_offsets(args: argparse.Namespace) -> int:
    from common.offsets_tool import main as offsets_main

    return offsets_main(list(args.rest))


def _cmd_topics(args: argparse.Namespace) -> int:
    from common.topics import main as topics_main

    return topics_main(list(args.rest))


def _cmd_notify(args: argparse.Namespace) -> int:
    tool = load_connector("sink-notify").tool
    assert tool is not None
    return int(tool(list(args.rest)))


_TOOLS = {"status": _cmd_status, "dlq": _cmd_dlq, "offsets": _cmd_offsets, "topics": _cmd_topics,
          "notify": _cmd_notify}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labconnect",
        description="Kafka Connect-style connectors for lab results: LIS -> Kafka -> notify, billing, warehouse. "
        "Configured by environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(REGISTRY)

    run = sub.add_parser("run", help=f"run a connector: {', '.join(names)}")
    run.add_argument("connector", choices=names)
    run.add_argument("--print-config", action="store_true", help="print the effective config (secrets redacted)")
    run.set_defaults(handler=_cmd_run)

    migrate = sub.add_parser("migrate", help="bring a connector's database schema up to date")
    migrate.add_argument("connector", choices=names)
    migrate.set_defaults(handler=_cmd_migrate)

    replay = sub.add_parser("replay", help="backfill: re-read a time window from the source",
                            description="Backfill: run a source connector's task over a past time window under "
                            "its own connector name.",
                            epilog="labconnect replay source-lis --since ISO [--until ISO] [--topic T ...]; "
                            "`labconnect replay source-lis --help` describes each option.")
    replay.add_argument("connector", choices=names)
    replay.add_argument("rest", nargs=argparse.REMAINDER)
    replay.set_defaults(handler=_cmd_replay)

    for name, handler, text in (
        ("status", _cmd_status, "one view of every connector's status"),
        ("dlq", _cmd_dlq, "summarise, inspect and re-drive the dead-letter queue"),
        ("offsets", _cmd_offsets, "show or reset where a connector resumes (`offsets get|reset <connector>`)"),
        ("topics", _cmd_topics, "create the project's topics"),
        ("notify", _cmd_notify, "the notification sink's ledger: `notify report --since 24h`"),
    ):
        command = sub.add_parser(name, help=text, add_help=False)
        command.add_argument("rest", nargs=argparse.REMAINDER)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; exits the process with the command's exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Tool commands parse their own options (argparse's REMAINDER drops leading --flags).
    if arguments and arguments[0] in _TOOLS:
        args = argparse.Namespace(handler=_TOOLS[arguments[0]], rest=arguments[1:])
    elif len(arguments) >= 2 and arguments[0] == "replay" and not arguments[1].startswith("-"):
        args = argparse.Namespace(handler=_cmd_replay, connector=arguments[1], rest=arguments[2:])
    else:
        args = parser.parse_args(arguments)
    from confluent_kafka import KafkaException

    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except ConfigError as error:
        print(f"labconnect: {error}", file=sys.stderr)
        code = EXIT_CONFIG
    except ConnectorError as error:  # e.g. the broker or the database is unreachable
        print(f"labconnect: {error}", file=sys.stderr)
        code = 1
    except KafkaException as error:  # an operator tool's request the cluster refused or timed out
        kafka_error = error.args[0] if error.args else error
        print(f"labconnect: Kafka: {getattr(kafka_error, 'str', lambda: str(kafka_error))()}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # The reader went away (`labconnect status --json | head -1`): nothing more to say, and
        # nothing left for the interpreter to flush into the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # what a shell reports for a command ended by SIGPIPE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

"""`python -m connectors.sink_notify` runs the notification sink (same as `labconnect run sink-notify`)."""

from common.cli import main

raise SystemExit(main(["run", "sink-notify"]))

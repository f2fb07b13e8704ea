"""`python -m connectors.sink_billing` runs the billing sink (same as `labconnect run sink-billing`)."""

from common.cli import main

raise SystemExit(main(["run", "sink-billing"]))

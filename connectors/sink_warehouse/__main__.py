"""`python -m connectors.sink_warehouse` runs the warehouse sink (same as `labconnect run sink-warehouse`)."""

from common.cli import main

raise SystemExit(main(["run", "sink-warehouse"]))

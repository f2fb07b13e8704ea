"""`python -m connectors.source_lis` runs the LIS source (same as `labconnect run source-lis`)."""

from common.cli import main

raise SystemExit(main(["run", "source-lis"]))

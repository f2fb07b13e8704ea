"""Alembic environment of the billing sink, run in code by ``connectors.sink_billing.schema``."""

from common.database import run_alembic_env

VERSION_TABLE = "billing_alembic_version"  # one database may serve several connectors

run_alembic_env(VERSION_TABLE, "labconnect migrate sink-billing")

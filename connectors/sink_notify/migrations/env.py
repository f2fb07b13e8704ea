"""Alembic environment of the notification sink, run in code by ``connectors.sink_notify.schema``."""

from common.database import run_alembic_env

VERSION_TABLE = "notify_alembic_version"  # one database may serve several connectors

run_alembic_env(VERSION_TABLE, "labconnect migrate sink-notify")

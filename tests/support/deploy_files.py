"""What the deployment files (compose, Kubernetes) may set, judged by the code: every
environment variable must be a setting of the connector it configures (or its ``_FILE``
form, or a Kafka client property), and the whole environment must load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from common.config import load_settings
from common.connector import load_connector

# Read by libraries, not by the settings: boto3's credentials for sink-warehouse.
LIBRARY_VARIABLES = {"sink-warehouse": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}


def unknown_variables(connector: str, names: set[str]) -> set[str]:
    """The names among ``names`` that configure nothing in ``connector``."""
    fields = {name.upper() for name in load_connector(connector).settings.model_fields}
    known = fields | {f"{name}_FILE" for name in fields} | LIBRARY_VARIABLES.get(connector, set())
    return {name for name in names if name not in known and not name.startswith("KAFKA_")}


def load_with(connector: str, env: Mapping[str, str], secret_dir: Path) -> None:
    """Load ``connector``'s settings from ``env``: every ``*_FILE`` pointed at a file with a
    plausible secret in it (a database URL for ``*_DATABASE_URL_FILE``). Raises ConfigError."""
    resolved = dict(env)
    for name in env:
        if name.endswith("_FILE"):
            path = secret_dir / name
            path.write_text("postgresql+psycopg://u:pw@db:5432/d\n" if name.endswith("DATABASE_URL_FILE")
                            else "a-secret-of-at-least-sixteen-characters\n")
            resolved[name] = str(path)
    load_settings(load_connector(connector).settings, resolved)

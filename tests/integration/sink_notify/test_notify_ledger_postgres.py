"""The ledger's decisions and pacing, on PostgreSQL: every test of the SQLite unit suite again."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.unit.sink_notify.test_notify_ledger import *  # noqa: F401,F403  (the tests themselves)


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    name = f"notify_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name

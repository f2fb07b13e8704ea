"""A fresh billing database per test: SQLite, and PostgreSQL with each write method."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from connectors.sink_billing.schema import make_engine
from connectors.sink_billing.task import BillingSinkTask
from tests.unit.sink_billing.billing_records import start_task


def create_database(server_url: str) -> str:
    """CREATE DATABASE needs autocommit; returns the new database's URL."""
    name = f"billing_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


@dataclass
class BillingDatabase:
    url: str
    write_method: str
    engines: list[Engine] = field(default_factory=list)
    tasks: list[BillingSinkTask] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"

    def engine(self) -> Engine:
        engine = make_engine(self.url)
        self.engines.append(engine)
        return engine

    def task(self, **settings: Any) -> BillingSinkTask:
        task = start_task(self.url, billing_write_method=self.write_method, **settings)
        self.tasks.append(task)
        return task


@pytest.fixture(params=["sqlite", "postgresql-copy", "postgresql-multirow"])
def billing_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BillingDatabase]:
    if request.param == "sqlite":
        db = BillingDatabase(f"sqlite:///{tmp_path / 'billing.db'}", "multirow")
    else:
        server_url = request.getfixturevalue("postgres_url")
        db = BillingDatabase(create_database(server_url), request.param.split("-", 1)[1])
    yield db
    for task in db.tasks:
        task.stop()
    for engine in db.engines:
        engine.dispose()

"""The billing database goes away and comes back: retriable, and nothing lost or doubled.

Uses its own PostgreSQL server so stopping it cannot break the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.errors import RetriableError, is_retriable
from connectors.sink_billing.audit import charge_counts
from connectors.sink_billing.task import BillingSinkTask
from devstack.postgres import PostgresServer, start_postgres
from tests.integration.sink_billing.conftest import create_database
from tests.unit.sink_billing.billing_records import TOPIC, ReportStream, deliver, start_task


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("write_method", ["copy", "multirow"])
def test_database_outage_is_retriable_and_the_retried_batch_commits_once(
        own_server: PostgresServer, write_method: str) -> None:
    url = create_database(own_server.url)
    task: BillingSinkTask = start_task(url, billing_write_method=write_method)
    stream = ReportStream()
    first = [stream.report("final", accession="ACC-1")]
    second = [stream.report("final", accession="ACC-2"), stream.report("cancelled", accession="ACC-1", version=2)]
    deliver(task, first, stream.positions(first))
    own_server.pg_ctl("stop")
    try:
        with pytest.raises(RetriableError) as caught:
            deliver(task, second, stream.positions())
        assert is_retriable(caught.value) and "lab-reports/0@1..2" in str(caught.value)
        with pytest.raises(RetriableError):
            task.open([(TOPIC, 0)])
    finally:
        own_server.pg_ctl("start")
    deliver(task, second, stream.positions())  # the runtime's retry after abort()
    counts = charge_counts(task.writer.engine)
    assert {k.accession: (c.charges, c.reversals) for k, c in counts.items()} == {"ACC-1": (1, 1), "ACC-2": (1, 0)}
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 3}
    task.stop()


def test_unreachable_database_at_start_is_retriable(own_server: PostgresServer) -> None:
    url = create_database(own_server.url)
    unreachable = url.replace(f":{own_server.port}/", ":1/")
    with pytest.raises(RetriableError, match="billing database"):
        start_task(unreachable)
    with pytest.raises(RetriableError, match="billing database"):
        start_task(unreachable, billing_migrate_on_start=False)

"""How database failures reach the runtime: the record's fault (permanent) or not (retriable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from common.errors import PermanentError, RetriableError, TaskFailed
from tests.unit.sink_billing.billing_records import TOPIC, ReportStream, deliver, start_task


def test_a_broken_database_is_retriable_not_the_records_fault(tmp_path: Path) -> None:
    task, stream = start_task(f"sqlite:///{tmp_path / 'billing.db'}"), ReportStream()
    stream.report("final")
    with task.writer.engine.begin() as conn:
        conn.execute(text("DROP TABLE billing_ledger"))
    with pytest.raises(RetriableError, match=r"writing 1 billing events \(lab-reports/0@0..0\).*OperationalError"):
        deliver(task, stream.records, stream.positions())


def test_a_check_violation_names_the_constraint_and_positions_only(tmp_path: Path) -> None:
    task, stream = start_task(f"sqlite:///{tmp_path / 'billing.db'}"), ReportStream(next_offset=40)
    stream.report("final", source_system="")
    with pytest.raises(PermanentError) as caught:
        deliver(task, stream.records, stream.positions())
    assert str(caught.value) == ("writing 1 billing events (lab-reports/0@40..40): "
                                 "a row violates CHECK constraint ck_billing_charges_source_system_not_empty")
    assert task.open([(TOPIC, 0)]) is None


def test_a_put_that_fails_buffers_nothing_from_that_batch(tmp_path: Path) -> None:
    # errors.tolerance=none: the runtime's report() raises, and the batch is not half-buffered.
    task, stream = start_task(f"sqlite:///{tmp_path / 'billing.db'}"), ReportStream()
    task.context.report = _fail_task  # type: ignore[method-assign]
    good, bad = stream.report("final"), stream.report("archived")
    with pytest.raises(TaskFailed):
        deliver(task, [good, bad], stream.positions())
    deliver(task, [], {(TOPIC, 0): 2})
    assert task.open([(TOPIC, 0)]) == {(TOPIC, 0): 2}
    with task.writer.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM billing_ledger")).scalar() == 0


def _fail_task(record: object, error: BaseException, stage: str = "TASK_PUT") -> None:
    raise TaskFailed("errors.tolerance=none")

from __future__ import annotations

import pytest

from common.dlq import HEADER_PREFIX, DlqBudget, DlqLimit, DlqLimitExceeded, context_headers
from common.retry import RetryPolicy


def test_backoff_is_jittered_and_capped() -> None:
    delays = RetryPolicy(timeout_ms=-1, max_delay_ms=1000, initial_delay_ms=100).delays()
    values = [next(delays) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in values)
    assert len(set(values)) > 40  # full jitter, not a fixed schedule


def test_zero_timeout_never_retries() -> None:
    assert list(RetryPolicy(timeout_ms=0).delays()) == []


def test_context_headers_are_the_ten_kafka_connect_names_and_carry_no_values() -> None:
    try:
        raise ValueError("phone +1 555 010 2345 rejected")
    except ValueError as error:
        headers = dict(context_headers(topic="lab-reports", partition=2, offset=41, connector="sink-billing",
                                       task_id=0, stage="TASK_PUT", class_name="BillingSinkTask", error=error))
    names = {k[len(HEADER_PREFIX):] for k in headers}
    assert names == {"topic", "partition", "offset", "connector.name", "task.id", "stage", "class.name",
                     "exception.class.name", "exception.message", "exception.stacktrace"}
    assert headers[HEADER_PREFIX + "offset"] == b"41"
    assert b"555" not in headers[HEADER_PREFIX + "exception.message"]
    assert b"555" not in headers[HEADER_PREFIX + "exception.stacktrace"]


def test_dlq_limit_stops_a_run_of_invalid_records() -> None:
    budget = DlqBudget(DlqLimit(max_invalid_ratio=1.0, max_consecutive_count=3, min_records=1))
    budget.record_valid(10)
    for _ in range(3):
        budget.record_invalid()
    with pytest.raises(DlqLimitExceeded):
        budget.record_invalid()


def test_dlq_limit_stops_a_high_invalid_ratio() -> None:
    budget = DlqBudget(DlqLimit(max_invalid_ratio=0.2, max_consecutive_count=100, min_records=10))
    budget.record_valid(8)
    budget.record_invalid()  # 1 of 9: below min_records
    budget.record_invalid()  # 2 of 10 = 0.2: at the limit, allowed
    with pytest.raises(DlqLimitExceeded):
        budget.record_invalid()

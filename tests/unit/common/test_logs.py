"""Log lines: identifiers only, and no credential a message happens to quote in a URL."""

from __future__ import annotations

import json
import logging

import pytest

from common.logs import JsonFormatter, TextFormatter
from common.status import StatusReporter, TaskState

URL = "https://lis.example/fhir/DiagnosticReport?_count=10&access_token=tok123"


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("labconnect.test", logging.WARNING, __file__, 1, message, args, None)


def test_json_and_text_lines_hide_credentials_in_urls() -> None:
    record = _record("GET %s failed; retrying against %s", URL, "postgresql://billing:pw789@db/billing")
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == ("GET https://lis.example/fhir/DiagnosticReport?_count=10&access_token=******** failed; "
                           "retrying against postgresql://********@db/billing")
    text = TextFormatter().format(record)
    assert "tok123" not in text and "pw789" not in text and "access_token=********" in text


def test_status_traces_hide_credentials_in_urls() -> None:
    reporter = StatusReporter("source-lis", 0, "source")
    reporter.set(TaskState.FAILED, trace=f"RetriableError: FHIR server unreachable: {URL}")
    assert "tok123" not in json.dumps(reporter.connector_view())
    assert reporter.trace is not None and "access_token=********" in reporter.trace


def test_a_librdkafka_line_repeated_at_every_reconnect_is_written_once_a_window_with_a_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from common import kafka_clients

    clock = [100.0]
    monkeypatch.setattr(kafka_clients.time, "monotonic", lambda: clock[0])
    repeats = kafka_clients.RepeatFilter(window_s=60)
    refused = "FAIL [rdkafka#consumer-2] [thrd:k:1/bootstrap]: Connect to ipv4#127.0.0.1:1 failed: " \
              "Connection refused (after %dms in state CONNECT)"
    passed = []
    for n in range(50):
        clock[0] += 0.05
        record = _record(refused, n)
        if repeats.filter(record):
            passed.append(record.getMessage())
    assert passed == [refused % 0]
    other = _record("FAIL [rdkafka#producer-1] [thrd:k:1/bootstrap]: Connect failed: Connection refused")
    assert repeats.filter(other), "another client's line is its own kind"
    clock[0] += 60
    record = _record(refused, 3)
    assert repeats.filter(record)
    assert record.getMessage() == f"{refused % 3} (49 more like this in the last 60s)"

"""Log lines: identifiers only, and no credential a message happens to quote in a URL."""

from __future__ import annotations

import json
import logging

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

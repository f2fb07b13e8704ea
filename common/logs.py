"""Structured logging: JSON lines (plain text on a TTY), identifiers only.

Log calls pass identifiers as ``extra`` fields (connector, task, topic, partition,
offset, accession, message_id); record contents never go into a log line. Credentials a
message quotes in a URL (``user:pw@``, ``?access_token=``) are hidden as it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from common.config import WorkerSettings
from common.errors import redact_url_secrets

_CONTEXT_FIELDS = ("connector", "task", "topic", "partition", "offset", "state", "count", "message_id",
                   "accession", "error_class", "attempt", "delay_s", "duration_ms")
_context: dict[str, Any] = {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_url_secrets(record.getMessage()),
            **_context,
        }
        for name in _CONTEXT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            # Only the class: a foreign exception's text may carry record values.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**_context, **{n: getattr(record, n) for n in _CONTEXT_FIELDS if hasattr(record, n)}}
        suffix = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {redact_url_secrets(record.getMessage())}"
        if record.exc_info and record.exc_info[0] is not None:
            text += f" [{record.exc_info[0].__name__}]"
        return f"{text}  {suffix}" if suffix else text


def configure_logging(settings: WorkerSettings, connector: str | None = None) -> None:
    """Install the JSON or text formatter on the root logger."""
    use_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _context.clear()
    _context.update({"connector": connector or settings.connector_name, "task": settings.task_id})

"""Logging of `cthm serve` and `cthm agent run`: one line per record on stderr, in UTC.

text (the default): `2026-12-04T23:15:02.123Z INFO cthm.agent.agent: message`; with several
API workers the logger name carries the pid (`cthm.api[4242]`).
json: one object per line, for log shippers: time, level, logger, message, pid, and the
traceback as `exc` when there is one.

Times are ISO 8601 in UTC with a Z everywhere (the API's timestamps are too), whatever the
host's time zone. cthm's own loggers log at the configured level; libraries (alembic,
sqlalchemy, uvicorn) only at WARNING and above unless cthm runs at DEBUG. Secrets are masked in
every line (redaction.install).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_PID = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def utc_time(record: logging.LogRecord) -> str:
    """The record's time as ISO 8601 in UTC, to the millisecond, with a Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on odd arguments (the message is formatted
    as logging would, then encoded)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text", *, with_pid: bool = False) -> None:
    """Sets up the root handler (replacing any earlier one: called once per process, at
    start). with_pid: text lines name their process (several API workers share stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(UtcFormatter(TEXT_FORMAT_PID if with_pid else TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    logging.getLogger("cthm").setLevel(level)
    from cthm.cli import redaction

    redaction.install()  # no secret in any line, from the first one

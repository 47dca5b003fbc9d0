"""The operational log: text or JSON lines on stderr, UTC times, the worker's id.

Audit lines never come here: they go to ``audit.output`` (stdout by default), so each
stream stays one format a collector can parse line by line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from gateway.config.settings import LogSettings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def utc_time(created: float) -> str:
    """``created`` (epoch seconds) as ISO 8601 in UTC with milliseconds and ``Z``."""
    second = int(created)
    millis = min(int((created - second) * 1000), 999)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> [worker=<id>] <message>``, then any traceback."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = "" if worker is None else f" worker={worker}"

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{utc_time(record.created)} {record.levelname} {record.name}{self._worker} "
                f"{record.getMessage()}")
        details = self._details(record)
        return f"{line}\n{details}" if details else line

    def _details(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class JsonFormatter(TextFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``worker``
    under ``serve --workers N``, and ``exception`` with the traceback's text.

    Only these members: arguments a caller attached to a record are not written, so the
    line holds nothing the message does not already say.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__(worker)
        self._worker_id = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": utc_time(record.created), "level": record.levelname.lower(),
            "logger": record.name, "message": record.getMessage()}
        if self._worker_id is not None:
            line["worker"] = self._worker_id
        details = self._details(record)
        if details:
            line["exception"] = details
        # ensure_ascii: a newline or control character in a message cannot start a new line.
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


def configure_logging(settings: LogSettings | None = None, *, worker: int | None = None,
                      stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in the configured format and level.

    Called again once the configuration is read: the handler of an earlier call is replaced.
    """
    settings = settings or LogSettings()
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter if settings.format == "json" else TextFormatter
    handler.setFormatter(formatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[settings.level])

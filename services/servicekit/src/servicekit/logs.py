"""JSON logs: one object per line on stdout, and optionally a rotating file.

Every line carries `request_id`, `trace_id` and `span_id` when they exist, so one
request can be followed across both services and into the tracing backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace

from servicekit.context import request_id_var

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
# uvicorn adds `color_message`, a copy of `msg` with terminal colours.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; `extra=` fields become top-level keys.

    A record goes to stdout and, with a log file, to the file too: each handler asks
    for it, so the line is built once and kept on the record for the next one.
    """

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get("_servicekit_json")
        if cached is not None and cached[0] is self:
            return str(cached[1])
        line = self._format(record)
        record._servicekit_json = (self, line)
        return line

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(seconds: int) -> str:
    # Formatted once per second, not once per line: lines come in bursts.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class SharedRotatingFileHandler(logging.Handler):
    """A size-rotated log file that several processes append to safely.

    Every gunicorn worker writes the same `api.log`. The stdlib `RotatingFileHandler`
    assumes one writer: two workers would both rotate, and one would keep writing to the
    renamed file. Here each write holds an exclusive `flock` on `<file>.lock`, reopens
    the file if another process has rotated it, and rotates only when the write would
    pass `max_bytes`.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock_fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._follow_rotation()
                size = os.fstat(self._fd).st_size
                if self.backups and size and size + len(data) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, data)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)

    def _follow_rotation(self) -> None:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(self._fd).st_ino:
            os.close(self._fd)
            self._fd = self._open()

    def _rotate(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = Path(f"{self.path}.{index}")
            if older.exists():
                older.replace(f"{self.path}.{index + 1}")
        self.path.replace(f"{self.path}.1")
        os.close(self._fd)
        self._fd = self._open()

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        super().close()


def configure_logging(
    level: str = "info",
    *,
    log_file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Route the root logger (and uvicorn's and gunicorn's) to JSON handlers.

    Idempotent: calling it again replaces the handlers instead of adding more.
    """
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(SharedRotatingFileHandler(log_file, max_bytes=max_bytes, backups=backups))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours; its error log joins the root.
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True

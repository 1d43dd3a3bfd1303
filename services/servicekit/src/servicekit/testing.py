"""Helpers for the services' own tests: capturing one logger's records.

pytest's `caplog` sees only what reaches the root logger's handlers, and every app
factory replaces those (`configure_logging`), so tests attach a handler of their own.
"""

from __future__ import annotations

import logging


class RecordList(logging.Handler):
    """Keeps every record it is given, for assertions on structured fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class LoggerCapture:
    """`capture("access")` returns a list that fills with that logger's records (DEBUG+);
    `restore()` detaches every handler and puts the levels back."""

    def __init__(self) -> None:
        self._attached: list[tuple[logging.Logger, RecordList, int]] = []

    def __call__(self, name: str) -> list[logging.LogRecord]:
        logger = logging.getLogger(name)
        handler = RecordList()
        self._attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return handler.records

    def restore(self) -> None:
        for logger, handler, level in self._attached:
            logger.removeHandler(handler)
            logger.setLevel(level)
        self._attached.clear()

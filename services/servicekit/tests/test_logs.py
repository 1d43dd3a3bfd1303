from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext

from servicekit.context import request_id_var
from servicekit.logs import JsonFormatter, configure_logging


def make_record(msg: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("demo.logger", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def formatted(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert isinstance(entry, dict)
    return entry


def test_standard_fields() -> None:
    entry = formatted(make_record("hello %s", "world"))
    assert entry["level"] == "warning"
    assert entry["logger"] == "demo.logger"
    assert entry["msg"] == "hello world"
    assert entry["ts"].endswith("Z")
    assert len(entry["ts"]) == len("2024-01-01T00:00:00.000Z")
    # Outside a request and a span there is nothing to correlate with.
    assert "request_id" not in entry
    assert "trace_id" not in entry


def test_timestamps_are_exact_utc_milliseconds() -> None:
    # Records from the same second and from the next: the per-second cache must not
    # hand one second's text to another.
    stamps = [1700000000.0, 1700000000.999, 1700000001.5, 1700000000.25]
    texts = []
    for created in stamps:
        record = make_record("x")
        record.created = created
        texts.append(formatted(record)["ts"])
    assert texts == [
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.500Z",
        "2023-11-14T22:13:20.250Z",
    ]


def test_request_id_from_context() -> None:
    token = request_id_var.set("req-123")
    try:
        entry = formatted(make_record())
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "req-123"


def test_trace_and_span_ids_from_the_current_span() -> None:
    context = SpanContext(trace_id=0xABC, span_id=0x12, is_remote=False)
    with trace.use_span(NonRecordingSpan(context)):
        entry = formatted(make_record())
    assert entry["trace_id"] == f"{0xABC:032x}"
    assert entry["span_id"] == f"{0x12:016x}"


def test_extras_become_top_level_and_color_message_is_dropped() -> None:
    record = make_record(method="GET", status=200, path=Path("/x"), color_message="\x1b[1mhi")
    entry = formatted(record)
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["path"] == "/x"  # not JSON-native: written as str()
    assert "color_message" not in entry
    # None of LogRecord's own attributes leak in.
    assert not {"args", "levelno", "pathname", "lineno", "msecs", "created"} & entry.keys()


def test_exception_is_one_field_of_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = formatted(record)
    assert entry["msg"] == "failed"
    assert "ValueError: boom" in entry["exc"]


def test_configure_logging_writes_json_lines_to_the_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "api.log"
    configure_logging("debug", log_file=log_file)

    logging.getLogger("demo").info("first", extra={"route": "/items/{id}"})
    logging.getLogger("demo").debug("second")
    for handler in logging.getLogger().handlers:
        handler.flush()

    lines = log_file.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["msg"] for e in entries] == ["first", "second"]
    assert entries[0]["route"] == "/items/{id}"
    assert entries[1]["level"] == "debug"


def test_configure_logging_is_idempotent(tmp_path: Path) -> None:
    log_file = tmp_path / "api.log"
    configure_logging("info", log_file=log_file)
    configure_logging("info", log_file=log_file)

    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 2  # stdout and the file, once each

    logging.getLogger("demo").info("once")
    for handler in ours:
        handler.flush()
    assert len(log_file.read_text(encoding="utf-8").splitlines()) == 1


def test_configure_logging_sets_level_and_quiets_uvicorn_access() -> None:
    logging.getLogger("uvicorn.error").addHandler(logging.NullHandler())
    configure_logging("warning")

    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("uvicorn.error").handlers == []
    assert logging.getLogger("uvicorn.error").propagate
    assert logging.getLogger("uvicorn.access").disabled


def test_stdout_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    logging.getLogger("demo").info("to stdout")
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1])["msg"] == "to stdout"


def test_a_record_is_formatted_once_for_all_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    formatter = JsonFormatter()
    built: list[str] = []
    original = JsonFormatter._format

    def counting(self: JsonFormatter, record: logging.LogRecord) -> str:
        line = original(self, record)
        built.append(line)
        return line

    monkeypatch.setattr(JsonFormatter, "_format", counting)
    record = make_record("to stdout and to the file")
    first, second = formatter.format(record), formatter.format(record)
    assert first == second
    assert len(built) == 1
    # Another formatter (another configuration) builds its own line.
    assert json.loads(JsonFormatter().format(record)) == json.loads(first)
    assert len(built) == 2
    assert "_servicekit_json" not in json.loads(first)

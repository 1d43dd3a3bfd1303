"""Several processes share one rotating log file without losing or splitting a line."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

from servicekit.logs import JsonFormatter, SharedRotatingFileHandler

WRITERS = 4
LINES = 400


def _write_lines(path: str, writer: int) -> None:
    handler = SharedRotatingFileHandler(Path(path), max_bytes=16 * 1024, backups=200)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"writer-{writer}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for line in range(LINES):
        logger.info("line", extra={"writer": writer, "line": line})
    handler.close()


def test_concurrent_writers_rotate_without_losing_lines(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_lines, args=(str(path), w)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    files = sorted(tmp_path.glob("api.log*"))
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 2, "the writers should have rotated the file several times"
    seen: set[tuple[int, int]] = set()
    for file in files:
        assert file.stat().st_size <= 16 * 1024
        for raw in file.read_text().splitlines():
            entry = json.loads(raw)  # a torn or interleaved line would not parse
            seen.add((entry["writer"], entry["line"]))
    assert seen == {(w, n) for w in range(WRITERS) for n in range(LINES)}


def test_a_file_rotated_by_another_process_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "api.log"
    first = SharedRotatingFileHandler(path, max_bytes=10**6, backups=2)
    second = SharedRotatingFileHandler(path, max_bytes=10**6, backups=2)
    for handler in (first, second):
        handler.setFormatter(logging.Formatter("%(message)s"))
    first.emit(logging.makeLogRecord({"msg": "before"}))
    path.rename(tmp_path / "api.log.1")  # what the other process's rotation does
    second.emit(logging.makeLogRecord({"msg": "after"}))
    first.emit(logging.makeLogRecord({"msg": "also after"}))
    first.close()
    second.close()
    assert path.read_text().splitlines() == ["after", "also after"]
    assert (tmp_path / "api.log.1").read_text().splitlines() == ["before"]

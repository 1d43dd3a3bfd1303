from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from downstream_mock.control import Control, ControlFile, Faults


def with_status(status: int) -> Control:
    return Control(faults=Faults(error_rate=1, error_status=status))


def set_status(status: int) -> Callable[[Control], Control]:
    return lambda _: with_status(status)


def test_missing_file_means_ready_and_no_faults(tmp_path: Path) -> None:
    control = ControlFile(tmp_path / "control.json").read()
    assert control.ready
    assert not control.faults.active


def test_update_is_seen_by_another_instance(tmp_path: Path) -> None:
    # Two instances on one file are two workers on one state directory.
    writer, reader = ControlFile(tmp_path / "c.json"), ControlFile(tmp_path / "c.json")
    assert reader.read().ready
    writer.update(lambda c: c.model_copy(update={"ready": False}))
    assert not reader.read().ready


def test_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    control = ControlFile(tmp_path / "c.json")
    control.update(lambda c: with_status(502))
    first = control.read()
    assert control.read() is first


def test_quick_same_size_writes_are_all_seen(tmp_path: Path) -> None:
    # Same size and, on a coarse clock, the same mtime: only a changed stamp shows them.
    writer, reader = ControlFile(tmp_path / "c.json"), ControlFile(tmp_path / "c.json")
    for index, status in enumerate([501, 502, 503, 504, 505] * 20):
        writer.update(set_status(status))
        # Reading only now and then lets inodes be reused between two reads.
        if index % 3 == 0:
            assert reader.read().faults.error_status == status


def test_updates_are_atomic_across_instances_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    ControlFile(path).update(lambda c: with_status(500))

    def bump(c: Control) -> Control:
        return with_status(c.faults.error_status + 1)

    def work() -> None:
        control = ControlFile(path)
        for _ in range(10):
            control.update(bump)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ControlFile(path).read().faults.error_status == 580


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    control = ControlFile(tmp_path / "c.json")
    for status in (501, 502, 503):
        control.update(set_status(status))
    assert sorted(os.listdir(tmp_path)) == ["c.json", "c.json.lock"]


def test_unreadable_file_keeps_the_last_good_control(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    control = ControlFile(path)
    control.update(lambda c: with_status(504))
    assert control.read().faults.error_status == 504
    path.write_text("{not json")
    assert control.read().faults.error_status == 504
    # And a writer starts over from the defaults rather than failing.
    control.update(lambda c: c.model_copy(update={"ready": False}))
    assert control.read() == Control(ready=False)

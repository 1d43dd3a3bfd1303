from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

from downstream_mock.store import Store

COUNT_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from downstream_mock.store import Store
store = Store(Path(sys.argv[1]))
print(json.dumps([store.count_call("shared") for _ in range(int(sys.argv[2]))]))
store.close()
"""


def test_items_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    first = store.create_item('{"a":1}', max_items=10)
    second = store.create_item('{"a":2}', max_items=10)
    assert first is not None
    assert second is not None
    assert second > first
    assert store.get_item(first) == '{"a":1}'
    assert store.replace_item(first, '{"a":3}')
    assert store.list_items(limit=10, offset=0) == ([(first, '{"a":3}'), (second, '{"a":2}')], 2)
    assert store.delete_item(first)
    assert not store.delete_item(first)
    assert not store.replace_item(first, "{}")
    assert store.get_item(first) is None
    store.close()


def test_ids_are_not_reused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    first = store.create_item("{}", max_items=10)
    assert first is not None
    store.delete_item(first)
    assert store.create_item("{}", max_items=10) != first
    store.close()


def test_full_store_refuses(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.create_item("{}", max_items=1) is not None
    assert store.create_item("{}", max_items=1) is None
    assert store.list_items(limit=10, offset=0)[1] == 1
    store.close()


def test_two_stores_on_one_file_share_data(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "db"), Store(tmp_path / "db")
    item_id = a.create_item('{"x":1}', max_items=10)
    assert item_id is not None
    assert b.get_item(item_id) == '{"x":1}'
    assert a.count_call("k") == 1
    assert b.count_call("k") == 2
    a.close()
    b.close()


def test_call_counts_are_exact_across_threads(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        counts = [store.count_call("k") for _ in range(50)]
        with lock:
            seen.extend(counts)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 401))
    store.close()


def test_call_counts_are_exact_across_processes(tmp_path: Path) -> None:
    # What gunicorn workers do: separate processes, one database file.
    db = tmp_path / "db"
    Store(db).close()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", COUNT_IN_A_PROCESS, str(db), "100"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    seen: list[int] = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        seen.extend(json.loads(out))
    assert sorted(seen) == list(range(1, 401))


def test_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.count_call("k")
    assert (tmp_path / "db-wal").exists()
    store.close()


def _open_and_close(path: str) -> None:
    Store(Path(path)).close()


def test_workers_starting_at_once_all_set_up_the_same_file(tmp_path: Path) -> None:
    # gunicorn forks its workers together; each opens the fresh database and switches it
    # to WAL, which SQLite may refuse at once with "database is locked".
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f"round-{round_}.db"
        workers = [context.Process(target=_open_and_close, args=(str(path),)) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert [w.exitcode for w in workers] == [0] * 8, f"round {round_}"

"""Items and flaky-call counters in SQLite, so every gunicorn worker sees the same data.

Created on one worker, an item must be found by the next request whichever worker it
lands on, and the n-th call to `/flaky/{key}` must be the n-th across all workers. SQLite
in WAL mode gives both: concurrent readers, serialised writers, and a busy timeout that
makes a writer wait for the lock instead of failing.

Every method blocks on disk and locks: call them from a worker thread (FastAPI runs sync
`def` endpoints in its thread pool), never from the event loop. Each thread gets its own
connection, as the sqlite3 module expects.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How long a writer waits for another worker's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flaky (
    key TEXT PRIMARY KEY,
    calls INTEGER NOT NULL
);
"""


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Store:
    """The SQLite database of one state directory. Items are stored as opaque JSON text."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        conn = self._conn()
        # Workers starting at once set up the same file. Switching it to WAL can fail
        # with "database is locked" at once, without waiting out the busy timeout, so the
        # set-up is serialised with a file lock instead.
        with _exclusive(path.with_name(path.name + ".init-lock")):
            conn.execute("PRAGMA journal_mode=WAL")  # persistent for the database file
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode; transactions are explicit `BEGIN IMMEDIATE` where needed.
            # check_same_thread is off only so that close() can close every thread's
            # connection at shutdown; each connection is otherwise used by its own thread.
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # Items

    def create_item(self, data: str, *, max_items: int) -> int | None:
        """Store a new item and return its id, or None when the store is full."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
            if count >= max_items:
                conn.execute("ROLLBACK")
                return None
            cursor = conn.execute("INSERT INTO items (data) VALUES (?)", (data,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        item_id = cursor.lastrowid
        assert item_id is not None
        return item_id

    def get_item(self, item_id: int) -> str | None:
        row = self._conn().execute("SELECT data FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else str(row[0])

    def list_items(self, *, limit: int, offset: int) -> tuple[list[tuple[int, str]], int]:
        """One page of items in id order, and how many there are in all."""
        conn = self._conn()
        rows = conn.execute(
            "SELECT id, data FROM items ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        (total,) = conn.execute("SELECT count(*) FROM items").fetchone()
        return [(int(row[0]), str(row[1])) for row in rows], int(total)

    def replace_item(self, item_id: int, data: str) -> bool:
        cursor = self._conn().execute("UPDATE items SET data = ? WHERE id = ?", (data, item_id))
        return cursor.rowcount == 1

    def delete_item(self, item_id: int) -> bool:
        cursor = self._conn().execute("DELETE FROM items WHERE id = ?", (item_id,))
        return cursor.rowcount == 1

    # Flaky counters

    def count_call(self, key: str) -> int:
        """Count one more call for `key` and return the new count, atomically."""
        # fetchall, not fetchone: the write only commits once the statement has run to
        # completion, and until then this worker would hold the database's write lock.
        rows = (
            self._conn()
            .execute(
                "INSERT INTO flaky (key, calls) VALUES (?, 1) "
                "ON CONFLICT (key) DO UPDATE SET calls = calls + 1 RETURNING calls",
                (key,),
            )
            .fetchall()
        )
        return int(rows[0][0])
